"""The single-turn LXMERT oracle: fine-tune LXMERT + a 3-way head on one question at a time (`pipeline finetune`).

Inputs are built by the same code as `pipeline extract` (`inject_target`, `collate`, `lxmert_forward`), so the two
cannot drift apart. The output directory is a transformers model directory (model + tokenizer) plus
`oracle_head.pt` (head and optional target marker) and `oracle.json` (input settings), which `pipeline extract
--model DIR` reads back. Training state for `--resume` lives in `DIR/checkpoint.pt`.

    run_finetune(FinetuneConfig(train=..., valid=..., regions=..., out=Path("oracle")), device="cpu")
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from extract.encoder import (
    HEAD_FILE,
    Example,
    OracleSettings,
    TargetFeatures,
    autocast_dtype,
    collate,
    inject_target,
    load_lxmert,
    lxmert_forward,
)
from extract.games import LABELS, UNKNOWN, Game, parse_statuses, read_games
from extract.job import DEFAULT_MODEL, Precision, check_inputs, check_oracle_inputs, option
from extract.regions import RegionStore

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "finetune_metrics.csv"


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of `pipeline finetune`."""

    valid: Path = field(metadata={"help": "Validation games; the best epoch on them is kept."})
    regions: Path = field(metadata={"help": "Region store (.h5)."})
    out: Path | None = option(None, "Oracle directory to write (load it with `pipeline extract --model`).")
    train: Path | None = option(None, "Training games (.jsonl[.gz]); not needed with --eval-only.")
    model: str = option(DEFAULT_MODEL, "LXMERT to start from: hub id or directory.")
    target_features: Path | None = option(None, "Per-object target features (.h5); default: nearest region by IoU.")
    head: Literal["linear", "mlp"] = option("mlp", "3-way head on the pooled output.")
    marker: Literal["none", "offset"] = option(
        "offset",
        "offset: a learned vector added to the target slot's features, so the model can tell it from the detector's.",
    )
    status: str = option("success", "Games to use: 'all' or a comma list of statuses.")
    epochs: int = option(15, "Passes over the training questions.")
    lr: float = option(1e-5, "Peak learning rate (AdamW), after linear warm-up.")
    warmup: float = option(0.1, "Fraction of the steps spent warming up; then linear decay to 0.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    batch_size: int = option(32, "Questions per optimizer step (per process), before accumulation.")
    accumulate: int = option(1, "Gradient accumulation steps per optimizer step.")
    clip: float = option(1.0, "Gradient clipping (max norm).")
    max_length: int = option(32, "Question tokens kept, [CLS] and [SEP] included.")
    save_every: int = option(200, "Optimizer steps between resumable checkpoints (and one at every epoch end).")
    workers: int = option(0, "DataLoader worker processes building region inputs.")
    seed: int = option(0, "Seed for the head, marker, data order and dropout.")
    precision: Precision = option("auto", "auto = bf16 autocast on CUDA, fp32 on CPU.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    eval_only: bool = option(False, "Only report --model's accuracy on --valid (the model must be an oracle dir).")
    overwrite: bool = option(False, "Replace an existing output directory.")
    resume: bool = option(False, "Continue from OUT/checkpoint.pt (optimizer, scheduler, RNG, epoch and step).")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accumulate", "max_length", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"--warmup must be in [0, 1), got {self.warmup}")
        parse_statuses(self.status)
        if not self.eval_only and (self.train is None or self.out is None):
            raise ValueError("--train and --out are required (unless --eval-only)")


class SingleTurnOracle(nn.Module):
    """LXMERT + head: (question, regions with the target in the last slot) → 3 logits [B, 3]."""

    def __init__(self, lxmert: nn.Module, head: str, marker: str) -> None:
        super().__init__()
        hidden = lxmert.config.hidden_size
        self.lxmert = lxmert
        if head == "linear":
            self.head = nn.Linear(hidden, len(LABELS))
        else:
            self.head = nn.Sequential(
                nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, len(LABELS))
            )
        # Random, not zero: a zero marker leaves the target slot identical to its source region, and the two
        # get symmetric gradients that barely tell them apart.
        self.marker = nn.Parameter(torch.randn(lxmert.config.visual_feat_dim)) if marker == "offset" else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled, _ = lxmert_forward(self.lxmert, batch, self.marker)
        return self.head(pooled)

    def extras(self) -> dict[str, torch.Tensor]:
        """What `oracle_head.pt` holds: the head's tensors and the marker."""
        tensors = {f"head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()}
        if self.marker is not None:
            tensors["marker"] = self.marker.detach().cpu()
        return tensors

    def load_extras(self, tensors: dict[str, torch.Tensor]) -> None:
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        if self.marker is not None:
            self.marker.data.copy_(tensors["marker"])


class Questions(torch.utils.data.Dataset):
    """One item per answered question: (Example, label)."""

    def __init__(self, games: list[Game], store: RegionStore, targets: TargetFeatures | None) -> None:
        self.items = [(g, t) for g in games for t in g.turns if t.answer != UNKNOWN]
        self.store, self.targets = store, targets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Example, int]:
        game, turn = self.items[index]
        return Example(turn.question, inject_target(game, self.store[game.image], self.targets)), turn.answer


def _loader(
    questions: Questions, tokenizer: object, config: FinetuneConfig, order: list[int] | None, max_length: int
) -> object:
    def collate_labelled(items: list[tuple[Example, int]]) -> dict[str, torch.Tensor]:
        batch = collate([e for e, _ in items], tokenizer, max_length)
        batch["labels"] = torch.tensor([label for _, label in items])
        return batch

    sampler = order if order is not None else range(len(questions))
    return torch.utils.data.DataLoader(
        questions,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=collate_labelled,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    # its own generator: a DataLoader otherwise draws from the global RNG, and resume would shift dropout


@torch.inference_mode()
def accuracy(model: SingleTurnOracle, loader: object, device: str, dtype: torch.dtype | None) -> float:
    model.eval()
    right = total = 0
    for batch in tqdm(loader, desc="validate", unit="batch", leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            logits = model(batch)
        right += int((logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return right / max(total, 1)


def save_oracle(model: SingleTurnOracle, tokenizer: object, settings: OracleSettings, out: Path) -> None:
    """Write the oracle directory the transformers way, plus head/marker and the input settings."""
    out.mkdir(parents=True, exist_ok=True)
    model.lxmert.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tmp = out / (HEAD_FILE + ".tmp")
    torch.save(model.extras(), tmp)
    tmp.replace(out / HEAD_FILE)
    settings.write(out)


@dataclass
class Progress:
    """Where training stands; saved in the checkpoint so a resumed run continues the same epoch sums."""

    epoch: int = 0
    batch: int = 0  # batches of `epoch` already done
    best: float = -1.0
    loss_sum: float = 0.0
    right: int = 0
    seen: int = 0


# Options a resumed run must share with the killed one: they fix the data order, the schedule and the model.
RESUME_KEYS = ("train", "valid", "model", "target_features", "head", "marker", "status", "epochs", "lr", "warmup",
               "weight_decay", "batch_size", "accumulate", "max_length", "seed")  # fmt: skip


@dataclass
class Trainer:
    model: SingleTurnOracle
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler  # active for fp16 autocast only: bf16 and fp32 gradients do not underflow
    progress: Progress
    settings: dict  # RESUME_KEYS of the run's config, and the number of processes

    def save(self, path: Path) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "progress": asdict(self.progress),
            "settings": self.settings,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        log.debug("saved checkpoint epoch %d batch %d", self.progress.epoch, self.progress.batch)

    def restore(self, path: Path, device: str) -> None:
        state = torch.load(path, map_location=device, weights_only=True)
        changed = [k for k, v in self.settings.items() if state.get("settings", {}).get(k) != v]
        if changed:
            raise ValueError(
                f"{path}: the killed run used other {', '.join(changed)}; resume with the same options, "
                "or pass --overwrite to start again"
            )
        self.model.load_state_dict(state["model"])
        self.scaler.load_state_dict(state["scaler"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and device.startswith("cuda"):
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.progress = Progress(**state["progress"])
        log.info("resuming at epoch %d, batch %d", self.progress.epoch + 1, self.progress.batch)


def _prepare_out(config: FinetuneConfig) -> bool:
    """True when resuming from a checkpoint; refuses to clobber an existing directory otherwise."""
    if config.resume and (config.out / CHECKPOINT).is_file():
        return True
    if config.resume:
        raise FileNotFoundError(f"{config.out / CHECKPOINT}: nothing to resume; run without --resume")
    if config.out.exists() and any(config.out.iterdir()) and not config.overwrite:
        raise FileExistsError(f"{config.out}: output directory exists; pass --overwrite or --resume")
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / METRICS).write_text("epoch,train_loss,train_accuracy,valid_accuracy,lr\n")
    return False


def _questions(path: Path, config: FinetuneConfig, store: RegionStore, targets: TargetFeatures | None) -> Questions:
    games, _ = check_inputs(read_games(path, parse_statuses(config.status)), store, targets, skip_missing=False)
    questions = Questions(games, store, targets)
    if not questions.items:
        raise ValueError(f"{path}: no answered questions to train or validate on")
    return questions


def _train_epoch(
    trainer: Trainer,
    loader: object,
    config: FinetuneConfig,
    batches: int,
    device: str,
    dtype: torch.dtype | None,
    checkpoint: Path | None,
) -> None:
    """One pass over this rank's batches; `checkpoint` (rank 0 only) is written every `save_every` steps."""
    progress, model = trainer.progress, trainer.model
    trainer.net.train()
    bar = tqdm(
        loader,
        desc=f"finetune epoch {progress.epoch + 1}/{config.epochs}",
        unit="batch",
        disable=checkpoint is None,
        initial=progress.batch,
        total=batches,
    )
    for batch in bar:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            logits = trainer.net(batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        trainer.scaler.scale(loss / config.accumulate).backward()
        progress.loss_sum += loss.item() * len(batch["labels"])
        progress.right += int((logits.argmax(-1) == batch["labels"]).sum())
        progress.seen += len(batch["labels"])
        progress.batch += 1
        if progress.batch % config.accumulate == 0 or progress.batch == batches:
            trainer.scaler.unscale_(trainer.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
            trainer.scheduler.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            step = progress.batch // config.accumulate
            if checkpoint is not None and step % config.save_every == 0 and progress.batch < batches:
                trainer.save(checkpoint)


def _end_epoch(trainer: Trainer, valid_accuracy: float, save_best: Callable[[], None], metrics: Path) -> None:
    """Log the epoch, keep the best model, append a metrics row and reset the epoch sums."""
    p = trainer.progress
    loss, train_accuracy = p.loss_sum / max(p.seen, 1), p.right / max(p.seen, 1)
    log.info("epoch %d: train loss %.4f acc %.4f, valid acc %.4f", p.epoch + 1, loss, train_accuracy, valid_accuracy)
    if valid_accuracy > p.best:
        p.best = valid_accuracy
        save_best()
    with open(metrics, "a", newline="") as handle:
        row = [p.epoch + 1, round(loss, 6), round(train_accuracy, 6), round(valid_accuracy, 6)]
        csv.writer(handle).writerow([*row, trainer.scheduler.get_last_lr()[0]])
    trainer.progress = Progress(epoch=p.epoch + 1, best=p.best)


def _keep_metrics_until(metrics: Path, epochs: int) -> None:
    """Drop rows after the checkpoint's last finished epoch (a kill can land between a row and its checkpoint)."""
    header, *rows = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(header + "".join(r for r in rows if int(r.split(",")[0]) <= epochs))


def _evaluate_only(config: FinetuneConfig, device: str) -> float:
    lxmert, tokenizer, settings, extras = load_lxmert(config.model)
    if settings.head == "none":
        raise ValueError(f"--model {config.model}: not an oracle directory (no head); see `pipeline finetune`")
    model = SingleTurnOracle(lxmert, settings.head, settings.marker)
    model.load_extras(extras)
    store = RegionStore(config.regions)
    targets = TargetFeatures(config.target_features) if config.target_features else None
    check_oracle_inputs(config.model, lxmert.config.visual_feat_dim, settings, store, targets)
    valid = _questions(config.valid, config, store, targets)
    loader = _loader(valid, tokenizer, config, None, settings.max_length)  # the oracle's own input settings
    return accuracy(model.to(device), loader, device, autocast_dtype(device, config.precision))


def run_finetune(
    config: FinetuneConfig, device: str, rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None
) -> float:
    """Fine-tune and return the best validation accuracy (or, with eval_only, the model's accuracy)."""
    if config.eval_only:
        return _evaluate_only(config, device)
    torch.manual_seed(config.seed)
    store = RegionStore(config.regions)
    targets = TargetFeatures(config.target_features) if config.target_features else None
    valid = _questions(config.valid, config, store, targets)
    train = _questions(config.train, config, store, targets)
    lxmert, tokenizer, _, _ = load_lxmert(config.model)
    settings = OracleSettings(config.max_length, config.marker, config.head, "file" if targets else "nearest")
    check_oracle_inputs(config.model, lxmert.config.visual_feat_dim, OracleSettings(), store, targets)
    dtype = autocast_dtype(device, config.precision)
    model = SingleTurnOracle(lxmert, config.head, config.marker).to(device)
    resuming = _prepare_out(config) if rank == 0 else config.resume
    barrier()
    per_rank = len(train) // world  # equal shards, so DDP ranks step together
    batches = -(-per_rank // config.batch_size)
    steps = -(-batches // config.accumulate) * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup * steps), steps)
    # The pooled output does not depend on the last cross layer's vision branch: those weights get no gradient.
    ddp = torch.nn.parallel.DistributedDataParallel
    net = ddp(model, find_unused_parameters=True) if world > 1 else model
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    run_settings = {**{k: str(getattr(config, k)) for k in RESUME_KEYS}, "processes": world}
    trainer = Trainer(model, net, optimizer, scheduler, scaler, Progress(), run_settings)
    checkpoint = config.out / CHECKPOINT
    if resuming:
        trainer.restore(checkpoint, device)
        if rank == 0:
            _keep_metrics_until(config.out / METRICS, trainer.progress.epoch)
    while trainer.progress.epoch < config.epochs:
        seed = config.seed + trainer.progress.epoch
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        order = order[: per_rank * world][rank::world][trainer.progress.batch * config.batch_size :]
        loader = _loader(train, tokenizer, config, order, config.max_length)
        _train_epoch(trainer, loader, config, batches, device, dtype, checkpoint if rank == 0 else None)
        if rank == 0:
            valid_accuracy = accuracy(model, _loader(valid, tokenizer, config, None, config.max_length), device, dtype)
            _end_epoch(
                trainer,
                valid_accuracy,
                lambda: save_oracle(model, tokenizer, settings, config.out),
                config.out / METRICS,
            )
            trainer.save(checkpoint)
        else:
            trainer.progress = Progress(epoch=trainer.progress.epoch + 1)
        barrier()
    if rank == 0:
        checkpoint.unlink(missing_ok=True)  # training finished: the oracle directory is the result
    return trainer.progress.best
