"""Training a stage-two oracle: `TrainConfig` (the `pipeline train` options) and `train()` (the loop).

Input: a train and a valid cache. Output: a run directory (config.json, metrics.csv with one row per epoch,
best.pt chosen by validation own-answer accuracy, last.pt, train.log). AdamW, gradient clipping, early
stopping.

    config = TrainConfig(train=Path("cache/train.h5"), valid=Path("cache/valid.h5"), out=Path("runs/d"))
    result = train(config, device="cpu")
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from classify.data import IGNORE_INDEX, NUM_CLASSES, Split, batches, feature_stats, num_batches, read_split
from classify.model import NUM_CATEGORIES, OracleSpec, answer_dialogues, build_model
from classify.run import check_run_dir, clear_run_dir, load_model, save_checkpoint

log = logging.getLogger(__name__)

# Options that may differ between a stopped run and its --resume: they change nothing already trained.
RESUMABLE_CHANGES = ("out", "epochs", "patience", "device", "resume", "overwrite")
# The prior system's dialogue LSTM (DESIGN.md "Reference facts"), trained here with a correct loss.
SEED_PRESET = {
    "model": "dialogue",
    "target_vision": False,
    "answer_feedback": False,
    "target": False,
    "hidden": 200,
    "layers": 1,
}
METRICS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_accuracy_gold",
    "valid_accuracy_own",
    "seconds",
)


@dataclass(frozen=True)
class TrainConfig:
    """Options of `pipeline train` (option names are the field names)."""

    train: Path = field(metadata={"help": "Oracle cache of the training split (.h5)."})
    valid: Path = field(metadata={"help": "Oracle cache of the validation split (.h5), for early stopping."})
    out: Path = field(metadata={"help": "Run directory to create (config.json, metrics.csv, best.pt, last.pt)."})
    model: Literal["dialogue", "turn"] = field(
        default="dialogue",
        metadata={"help": "dialogue: LSTM over the game's turns; turn: single-turn MLP baseline."},
    )
    preset: Literal["none", "seed"] = field(
        default="none",
        metadata={
            "help": "seed: the prior system's LSTM (pooled only, hidden 200, 1 layer, no answer feedback); "
            "overrides --target-vision, --answer-feedback, --target, --hidden, --layers."
        },
    )
    target_vision: bool = field(default=True, metadata={"help": "Add the target's LXMERT vision vector per turn."})
    answer_feedback: bool = field(
        default=True,
        metadata={"help": "Add the previous turn's answer (dialogue model only; gold in training)."},
    )
    target: bool = field(default=True, metadata={"help": "Add the target's category embedding and box."})
    hidden: int = field(default=256, metadata={"help": "LSTM / MLP hidden size."})
    layers: int = field(default=1, metadata={"help": "LSTM layers (dialogue model)."})
    base: Path | None = field(
        default=None,
        metadata={
            "help": "A trained `--model turn` run (same caches and options): the dialogue model starts from it, "
            "frozen, and its LSTM learns only what the dialogue adds."
        },
    )
    dropout: float = field(default=0.5, metadata={"help": "Dropout on the LSTM inputs and outputs and in the MLPs."})
    epochs: int = field(default=20, metadata={"help": "Maximum number of epochs."})
    patience: int = field(default=3, metadata={"help": "Stop after this many epochs without a better valid score."})
    batch_size: int = field(default=64, metadata={"help": "Games per batch."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    grad_clip: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this value (0: off)."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, dropout and shuffling."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    overwrite: bool = field(default=False, metadata={"help": "Replace the run files in an existing --out."})
    resume: bool = field(
        default=False,
        metadata={"help": "Continue a stopped run in --out from last.pt (same options; --epochs may grow)."},
    )

    def __post_init__(self) -> None:
        if self.preset == "seed":
            if self.model != "dialogue":
                raise ValueError("--preset seed is the prior dialogue LSTM; drop --model turn")
            for name, value in SEED_PRESET.items():
                object.__setattr__(self, name, value)
        if self.base is not None and (self.model != "dialogue" or self.preset == "seed"):
            raise ValueError("--base is for the dialogue model (not --model turn or --preset seed)")
        if self.model == "turn":  # the single-turn baseline sees nothing from other turns
            object.__setattr__(self, "answer_feedback", False)
        for name in ("hidden", "layers", "epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("--lr must be > 0, --weight-decay and --grad-clip >= 0")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues a run, --overwrite starts it again: give one of them")

    def spec(self, feature_size: int, num_categories: int) -> OracleSpec:
        return OracleSpec(
            kind=self.model,
            feature_size=feature_size,
            target_vision=self.target_vision,
            answer_feedback=self.answer_feedback,
            target=self.target,
            hidden=self.hidden,
            layers=self.layers,
            dropout=self.dropout,
            skip=self.preset != "seed",  # the prior system's LSTM fed a single Linear layer
            num_categories=num_categories,
        )


@dataclass(frozen=True)
class TrainResult:
    out: Path
    best_epoch: int
    best_accuracy: float  # validation accuracy with the model's own previous answers
    epochs: int


def train(config: TrainConfig, device: str | torch.device) -> TrainResult:
    """Train one model and write its run directory; `device` is resolved by the caller.

    Inputs are checked before anything is written: a bad cache leaves no half-made run directory.
    """
    if not config.resume:
        check_run_dir(config.out, config.overwrite)
    train_split = read_split(config.train, target_vision=config.target_vision)
    valid_split = read_split(config.valid, target_vision=config.target_vision)
    for split, path in ((train_split, config.train), (valid_split, config.valid)):
        if not (split.answer >= 0).any():
            raise ValueError(f"{path}: no question has a gold answer; train and valid caches need answers")
    if valid_split.feature_size != train_split.feature_size:
        raise ValueError(
            f"{config.valid}: {valid_split.feature_size}-d features, but {config.train} has "
            f"{train_split.feature_size}-d; extract both with the same model"
        )
    model = _build(config, train_split)
    if config.resume:
        _check_resumable(config)
    else:
        clear_run_dir(config.out, config.overwrite)
    handler = logging.FileHandler(config.out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("classify").addHandler(handler)
    try:
        return _train(config, model.to(device), train_split, valid_split, torch.device(device))
    finally:
        logging.getLogger("classify").removeHandler(handler)
        handler.close()


def _build(config: TrainConfig, train_split: Split) -> nn.Module:
    """The initialised model: seeded, inputs standardised with the training split, `--base` loaded and frozen."""
    num_categories = max(NUM_CATEGORIES, int(train_split.target_category.max()) + 1)
    torch.manual_seed(config.seed)
    model = build_model(config.spec(train_split.feature_size, num_categories))
    model.inputs.standardize(*feature_stats(train_split, model.spec.target_vision))
    if config.base is not None:
        base, _ = load_model(config.base)
        try:
            model.start_from(base)
        except ValueError as error:
            raise ValueError(f"--base {config.base}: {error}") from None
    return model


def _train(
    config: TrainConfig, model: nn.Module, train_split: Split, valid_split: Split, device: torch.device
) -> TrainResult:
    trainable = [p for p in model.parameters() if p.requires_grad]  # not a frozen --base
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    best_accuracy, best_epoch, done = -1.0, 0, 0
    if config.resume:
        best_accuracy, best_epoch, done = _restore(config, model, optimizer, rng, device)
    else:
        _write_config(config, model, train_split, valid_split, device)
    log.info(
        "%s model, %d parameters (%d trained); train %d games / %d questions, valid %d games / %d questions%s",
        config.model,
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in trainable),
        train_split.num_games,
        len(train_split.qid),
        valid_split.num_games,
        len(valid_split.qid),
        f"; resuming after epoch {done}" if done else "",
    )
    epoch = done
    with open(config.out / "metrics.csv", "a" if done else "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS)
        if not done:
            writer.writeheader()
        for epoch in range(done + 1, config.epochs + 1):
            if epoch - best_epoch > config.patience:
                break  # a resumed run that had already stopped early
            started = time.perf_counter()
            train_loss, train_accuracy = train_epoch(model, optimizer, train_split, config, rng, device, epoch)
            valid = validate(model, valid_split, config.batch_size * 4, device)
            seconds = round(time.perf_counter() - started, 2)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                **valid,
                "seconds": seconds,
            }
            writer.writerow(row)
            handle.flush()
            improved = valid["valid_accuracy_own"] > best_accuracy
            if improved:
                best_accuracy, best_epoch = valid["valid_accuracy_own"], epoch
                save_checkpoint(config.out / "best.pt", model, epoch, row, train_split)
            training = {
                "optimizer": optimizer.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "best_accuracy": best_accuracy,
                "best_epoch": best_epoch,
            }
            save_checkpoint(config.out / "last.pt", model, epoch, row, train_split, training)
            log.info(
                "epoch %d: train loss %.4f acc %.4f | valid loss %.4f, acc gold-history %.4f "
                "own-answers %.4f%s (%.1fs)",
                epoch,
                train_loss,
                train_accuracy,
                valid["valid_loss"],
                valid["valid_accuracy_gold"],
                valid["valid_accuracy_own"],
                " *" if improved else "",
                row["seconds"],
            )
            if epoch - best_epoch >= config.patience:
                log.info("no better valid accuracy for %d epochs: stopping", config.patience)
                break
    log.info("best epoch %d: valid own-answer accuracy %.4f; run in %s", best_epoch, best_accuracy, config.out)
    return TrainResult(config.out, best_epoch, best_accuracy, epoch)


def _check_resumable(config: TrainConfig) -> None:
    """A stopped run with the same options (but RESUMABLE_CHANGES) must be in `config.out`."""
    if not (config.out / "last.pt").is_file() or not (config.out / "config.json").is_file():
        raise FileNotFoundError(f"--out {config.out}: no run to resume (last.pt, config.json); drop --resume")
    before = json.loads((config.out / "config.json").read_text(encoding="utf-8"))["config"]
    now = _config_values(config)
    changed = [k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k]]
    if changed:
        names = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ValueError(f"--out {config.out}: the run was trained with other {names}; resume with the same options")


def _restore(
    config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, rng: np.random.Generator, device
) -> tuple[float, int, int]:
    """Load last.pt's weights and training state; drop metric rows of epochs it does not hold."""
    checkpoint = torch.load(config.out / "last.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    training = checkpoint["training"]
    optimizer.load_state_dict(training["optimizer"])
    rng.bit_generator.state = training["rng"]
    torch.set_rng_state(training["torch_rng"])
    done = int(checkpoint["epoch"])
    metrics = config.out / "metrics.csv"
    header, *rows = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    metrics.write_text(header + "".join(r for r in rows if int(r.split(",")[0]) <= done), encoding="utf-8")
    return float(training["best_accuracy"]), int(training["best_epoch"]), done


def dialogue_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every real, answered turn of the batch: logits [B, T, 3], labels [B, T]."""
    return F.cross_entropy(logits.view(-1, NUM_CLASSES), labels.view(-1), ignore_index=IGNORE_INDEX)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    config: TrainConfig,
    rng: np.random.Generator,
    device: torch.device,
    epoch: int,
) -> tuple[float, float]:
    """One pass over the shuffled split with gold previous answers; mean loss and accuracy per question."""
    model.train()
    total_loss, correct, count = 0.0, 0, 0
    progress = tqdm(
        batches(split, config.batch_size, rng),
        total=num_batches(split, config.batch_size),
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
    )
    for batch in progress:
        batch = batch.to(device)
        logits = model(batch)  # [B, T, 3]
        loss = dialogue_loss(logits, batch.labels)
        known = batch.labels != IGNORE_INDEX
        if not known.any():  # a batch whose answers are all unknown teaches nothing (and its loss is NaN)
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        n = int(known.sum())
        total_loss += loss.item() * n
        correct += int((logits.argmax(dim=-1) == batch.labels)[known].sum())
        count += n
    return total_loss / max(count, 1), correct / max(count, 1)


@torch.no_grad()
def validate(model: nn.Module, split: Split, batch_size: int, device: torch.device) -> dict[str, float]:
    """Loss and accuracy with gold previous answers, and accuracy with the model's own answers fed back."""
    model.eval()
    total_loss, correct_gold, correct_own, count = 0.0, 0, 0, 0
    for batch in batches(split, batch_size):
        batch = batch.to(device)
        logits = model(batch)
        known = batch.labels != IGNORE_INDEX
        total_loss += F.cross_entropy(logits[known], batch.labels[known], reduction="sum").item()
        correct_gold += int((logits.argmax(dim=-1) == batch.labels)[known].sum())
        own = answer_dialogues(model, batch, history="own") if model.spec.uses_feedback else logits
        own = own.argmax(dim=-1)
        correct_own += int((own == batch.labels)[known].sum())
        count += int(known.sum())
    count = max(count, 1)
    return {
        "valid_loss": total_loss / count,
        "valid_accuracy_gold": correct_gold / count,
        "valid_accuracy_own": correct_own / count,
    }


def _config_values(config: TrainConfig) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


def _write_config(
    config: TrainConfig, model: nn.Module, train_split: Split, valid_split: Split, device: torch.device
) -> None:
    record = {
        "config": _config_values(config),
        "spec": model.spec.to_dict(),
        "device": str(device),
        "torch": torch.__version__,
        "train": {
            "path": str(config.train),
            "games": train_split.num_games,
            "questions": len(train_split.qid),
            "cache_attrs": _plain(train_split.attrs),
        },
        "valid": {
            "path": str(config.valid),
            "games": valid_split.num_games,
            "questions": len(valid_split.qid),
        },
    }
    (config.out / "config.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _plain(attrs: dict) -> dict:
    """HDF5 attrs (numpy scalars and arrays) as JSON values."""
    return {k: v.tolist() if isinstance(v, np.ndarray | np.generic) else v for k, v in attrs.items()}
