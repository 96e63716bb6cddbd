"""The oracle cache: stage one's output and stage two's only input (HDF5, one file per split).

Rows are questions, contiguous per game, in dialogue order. Datasets:
  qid int64 [N] · game_id int64 [N] · turn int16 [N] · answer int8 [N] (-1 = unknown)
  question str [N] · image str [N] · target_category int16 [N] · target_box float32 [N, 4]
  pooled float16 [N, H] · target_vision float16 [N, H]
Attrs: schema_version, model, model_config_hash, model_weights_hash, transformers_version, target_mode, status_filter,
source_games, answer_labels, hidden_size, created.

    write_metadata(h5, games)            # preallocates every dataset, fills the per-question columns
    rows = read_rows(Path("cache/valid.h5"))
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from extract.games import LABELS, Game

SCHEMA_VERSION = 1
FEATURE_DATASETS = ("pooled", "target_vision")
_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class CacheRows:
    """Every column of a cache file, read into memory (the reader used by tests and tools)."""

    qid: np.ndarray
    game_id: np.ndarray
    turn: np.ndarray
    answer: np.ndarray
    question: list[str]
    image: list[str]
    target_category: np.ndarray
    target_box: np.ndarray
    pooled: np.ndarray
    target_vision: np.ndarray
    attrs: dict


def count_rows(games: list[Game]) -> int:
    return sum(len(game.turns) for game in games)


def columns(games: list[Game]) -> dict[str, np.ndarray | list[str]]:
    """The per-question columns of the schema (everything but the features), in row order."""
    rows = [(game, index, turn) for game in games for index, turn in enumerate(game.turns)]
    return {
        "qid": np.array([t.qid for _, _, t in rows], dtype=np.int64),
        "game_id": np.array([g.game_id for g, _, _ in rows], dtype=np.int64),
        "turn": np.array([i for _, i, _ in rows], dtype=np.int16),
        "answer": np.array([t.answer for _, _, t in rows], dtype=np.int8),
        "question": [t.question for _, _, t in rows],
        "image": [g.image for g, _, _ in rows],
        "target_category": np.array([g.target.category_id for g, _, _ in rows], dtype=np.int16),
        "target_box": np.array([g.target_box_normalised() for g, _, _ in rows], dtype=np.float32).reshape(-1, 4),
    }


def write_metadata(h5: h5py.File, games: list[Game], hidden_size: int, attrs: dict) -> None:
    """Create all datasets of the schema in an open, empty file; feature rows are zero until written."""
    n = count_rows(games)
    for name, values in columns(games).items():
        h5.create_dataset(name, data=values, dtype=_STR if isinstance(values, list) else values.dtype)
    for name in FEATURE_DATASETS:
        h5.create_dataset(name, shape=(n, hidden_size), dtype=np.float16, chunks=(min(max(n, 1), 256), hidden_size))
    h5.attrs.update(
        {
            "schema_version": SCHEMA_VERSION,
            "answer_labels": list(LABELS),
            "hidden_size": hidden_size,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **attrs,
        }
    )


def write_cache(path: Path, games: list[Game], pooled: np.ndarray, target_vision: np.ndarray, attrs: dict) -> None:
    """Write a complete cache in one call (tests, predict --cache); atomic via a temporary name."""
    if pooled.shape != target_vision.shape or pooled.shape[0] != count_rows(games):
        raise ValueError(
            f"{path}: features {pooled.shape}/{target_vision.shape} do not match {count_rows(games)} questions"
        )
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as h5:
        write_metadata(h5, games, pooled.shape[1], attrs)
        h5["pooled"][:] = pooled.astype(np.float16)
        h5["target_vision"][:] = target_vision.astype(np.float16)
    tmp.replace(path)


def read_rows(path: Path) -> CacheRows:
    """Read a whole cache into memory."""
    with h5py.File(path, "r") as h5:
        return CacheRows(
            qid=h5["qid"][:],
            game_id=h5["game_id"][:],
            turn=h5["turn"][:],
            answer=h5["answer"][:],
            question=[s.decode() if isinstance(s, bytes) else s for s in h5["question"][:]],
            image=[s.decode() if isinstance(s, bytes) else s for s in h5["image"][:]],
            target_category=h5["target_category"][:],
            target_box=h5["target_box"][:],
            pooled=h5["pooled"][:],
            target_vision=h5["target_vision"][:],
            attrs=dict(h5.attrs),
        )
