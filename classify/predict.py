"""Answering new games with a trained run: the model's own answers fed back turn by turn, as JSON lines.

Input: a `Split` of encoded questions (built by the caller: `pipeline predict` encodes games in memory with the
stage-one code) and a model from a run directory. Output: probabilities [N, 3] per question and one JSON record
per question (`game_id`, `qid`, `turn`, `question`, `answer`, `probs`, and `gold` when known). `LiveDialogue`
answers one game question by question, carrying the dialogue state, for a person or a Questioner model.

    probs = predict_split(model, split, batch_size=64, device="cpu")
    write_predictions(prediction_records(split, probs), Path("predictions.jsonl"))
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from classify.data import LABELS, UNKNOWN, Split, batches, make_split
from classify.model import answer_dialogues


@dataclass(frozen=True)
class PredictConfig:
    """Options of `pipeline predict`."""

    oracle: str = field(metadata={"help": "Oracle directory (or LXMERT hub id) that made the run's caches."})
    run: Path = field(metadata={"help": "Run directory made by `pipeline train` (its best.pt is used)."})
    regions: Path = field(metadata={"help": "Region store (.h5) holding the games' images."})
    games: Path | None = field(default=None, metadata={"help": "Games (.jsonl[.gz], one JSON game, or - for stdin)."})
    out: Path | None = field(default=None, metadata={"help": "Predictions file (.jsonl), or - for stdout."})
    target_features: Path | None = field(default=None, metadata={"help": "Per-object target features (.h5)."})
    cache: Path | None = field(default=None, metadata={"help": "Also keep the encoded questions as a cache file."})
    interactive: bool = field(default=False, metadata={"help": "Type questions about --game one at a time."})
    game: Path | None = field(default=None, metadata={"help": "The game (JSON) to play in --interactive mode."})
    batch_size: int = field(default=64, metadata={"help": "Questions per LXMERT forward pass; games per LSTM batch."})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={"help": "LXMERT precision."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})

    def __post_init__(self) -> None:
        if self.interactive and self.game is None:
            raise ValueError("--interactive needs --game GAME_JSON (the image and target to answer about)")
        if not self.interactive and (self.games is None or self.out is None):
            raise ValueError("--games and --out are required (or --interactive with --game)")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be ≥ 1, got {self.batch_size}")


@torch.no_grad()
def predict_split(model: nn.Module, split: Split, batch_size: int, device: str) -> np.ndarray:
    """Probabilities [N, 3] per row, each turn conditioned on the model's own earlier answers."""
    probs = np.zeros((len(split.qid), len(LABELS)), dtype=np.float32)
    for batch in batches(split, batch_size):
        out = answer_dialogues(model, batch.to(device), history="own").cpu().numpy()  # [B, T, 3]
        rows = batch.rows.numpy()
        probs[rows[rows >= 0]] = out[rows >= 0]
    return probs


def prediction_records(split: Split, probs: np.ndarray, questions: list[str]) -> list[dict]:
    records = []
    for row, p in enumerate(probs):
        record = {
            "game_id": int(split.game_id[row]),
            "qid": int(split.qid[row]),
            "turn": int(split.turn[row]),
            "question": questions[row],
            "answer": LABELS[int(p.argmax())],
            "probs": {label: round(float(v), 6) for label, v in zip(LABELS, p, strict=True)},
        }
        if split.answer[row] != UNKNOWN:
            record["gold"] = LABELS[int(split.answer[row])]
        records.append(record)
    return records


def write_predictions(records: list[dict], out: Path) -> None:
    """JSON lines to `out` (written under a temporary name, then renamed) or to stdout for `-`."""
    text = "".join(json.dumps(record) + "\n" for record in records)
    if str(out) == "-":
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)


def accuracy(records: list[dict]) -> float | None:
    """Share of records whose answer equals the gold one; None when no record has gold."""
    gold = [r for r in records if "gold" in r]
    return sum(r["answer"] == r["gold"] for r in gold) / len(gold) if gold else None


class LiveDialogue:
    """One game answered turn by turn: each new question sees the model's own answers to the earlier ones."""

    def __init__(self, model: nn.Module, game_id: int, category: int, box: np.ndarray, device: str) -> None:
        self.model, self.device = model, device
        self.game_id, self.category, self.box = game_id, category, np.asarray(box, dtype=np.float32)
        self.pooled: list[np.ndarray] = []
        self.vision: list[np.ndarray] = []

    def ask(self, pooled: np.ndarray, target_vision: np.ndarray) -> np.ndarray:
        """Probabilities [3] for the new question (pooled, target_vision [H]), given the dialogue so far."""
        self.pooled.append(np.asarray(pooled, dtype=np.float32))
        self.vision.append(np.asarray(target_vision, dtype=np.float32))
        n = len(self.pooled)
        split = make_split(
            f"game {self.game_id}",
            qid=np.arange(n),
            game_id=np.full(n, self.game_id),
            turn=np.arange(n),
            answer=np.full(n, UNKNOWN),
            target_category=np.full(n, self.category),
            target_box=np.repeat(self.box[None], n, axis=0),
            pooled=np.stack(self.pooled),
            target_vision=np.stack(self.vision),
        )
        return predict_split(self.model, split, 1, self.device)[-1]
