"""One split of the oracle cache in memory, and padded batches of whole games cut from it.

Input: an oracle cache file (HDF5, schema in DESIGN.md) or the same columns as arrays (predict builds those
in memory). Output: a `Split` (every row loaded once; fp16 features stay fp16) and `Batch`es of many games,
padded to the longest game, lengths on CPU for `pack_padded_sequence`, IGNORE_INDEX at padding and unknown
answers.

    split = read_split(Path("cache/valid.h5"), target_vision=True)
    for batch in batches(split, batch_size=64, rng=np.random.default_rng(0)):
        batch.pooled.shape  # [B, T, H]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

SCHEMA_VERSION = 1  # the cache schema this code reads; extract/cache.py writes the same number
LABELS = ("No", "Yes", "N/A")  # No = 0, Yes = 1, N/A = 2, as in DESIGN.md
NUM_CLASSES = len(LABELS)
UNKNOWN = -1  # answer not given in the cache (e.g. new games)
IGNORE_INDEX = -100  # label of padding and unknown answers; F.cross_entropy skips it
PREVIOUS_START = 3  # "previous answer" code of a game's first turn
PREVIOUS_UNKNOWN = 4  # previous answer exists but is not known: encoded as no information (all-zero one-hot)
BUCKET_POOL = 50  # batches per length-sorted pool when shuffling (see `batches`)
_CHECK_ROWS = 65536  # rows per finiteness check: bounds the temporary boolean array


@dataclass(frozen=True)
class Split:
    """Every row of one cache split, contiguous per game; `starts[g]:starts[g + 1]` are game g's rows."""

    source: str
    qid: np.ndarray  # int64 [N]
    game_id: np.ndarray  # int64 [N]
    turn: np.ndarray  # int16 [N]
    answer: np.ndarray  # int8 [N], UNKNOWN where not given
    target_category: np.ndarray  # int16 [N]
    target_box: np.ndarray  # float32 [N, 4], normalised x1 y1 x2 y2
    pooled: np.ndarray  # float16 [N, H]
    target_vision: np.ndarray | None  # float16 [N, H], None when not loaded
    starts: np.ndarray  # int64 [G + 1]
    question: list[str] | None = None
    attrs: dict = dataclasses.field(default_factory=dict)

    @property
    def num_games(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    @property
    def feature_size(self) -> int:
        return int(self.pooled.shape[1])


@dataclass
class Batch:
    """Padded games. B games, T = longest game in the batch, H = feature size."""

    rows: torch.Tensor  # [B, T] long: row in the split, -1 at padding
    lengths: torch.Tensor  # [B] int64, always on CPU (pack_padded_sequence wants it there)
    pooled: torch.Tensor  # [B, T, H] float32
    target_vision: torch.Tensor | None  # [B, T, H] float32
    previous: torch.Tensor  # [B, T] long: gold answer of the turn before, PREVIOUS_START, PREVIOUS_UNKNOWN
    category: torch.Tensor  # [B] long: target COCO category id
    box: torch.Tensor  # [B, 4] float32: target box
    labels: torch.Tensor  # [B, T] long: gold answer, IGNORE_INDEX at padding and unknown answers

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on `device`; lengths stay on CPU."""
        moved = {
            name: getattr(self, name).to(device) for name in ("rows", "pooled", "previous", "category", "box", "labels")
        }
        vision = None if self.target_vision is None else self.target_vision.to(device)
        return dataclasses.replace(self, target_vision=vision, **moved)


def read_split(path: Path, target_vision: bool = True, questions: bool = False) -> Split:
    """Load a cache file into memory and validate it; `target_vision` and question strings only if asked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such cache file; make one with `pipeline extract`")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: cannot open as HDF5 ({error}); is it a cache from `pipeline extract`?") from None
    with h5:
        attrs = dict(h5.attrs)
        _check_attrs(path, attrs)
        missing = [
            n for n in ("qid", "game_id", "turn", "answer", "target_category", "target_box", "pooled") if n not in h5
        ]
        if missing:
            raise ValueError(f"{path}: not an oracle cache, missing datasets {missing}")
        if target_vision and "target_vision" not in h5:
            raise ValueError(f"{path}: no target_vision dataset; train with --no-target-vision, or re-extract it")
        columns = {name: h5[name][:] for name in ("qid", "game_id", "turn", "answer", "target_category", "target_box")}
        columns["pooled"] = h5["pooled"][:]
        columns["target_vision"] = h5["target_vision"][:] if target_vision else None
        columns["question"] = (
            [s.decode() if isinstance(s, bytes) else s for s in h5["question"][:]] if questions else None
        )
    return make_split(str(path), attrs=attrs, **columns)


def _check_attrs(path: Path, attrs: dict) -> None:
    version = attrs.get("schema_version")
    if version is None:
        raise ValueError(f"{path}: not an oracle cache (no schema_version attribute); make one with `pipeline extract`")
    if int(version) != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: cache schema version {version}, this code reads version {SCHEMA_VERSION}; "
            "re-extract it with this version of `pipeline extract`"
        )
    labels = attrs.get("answer_labels")
    if labels is not None and [str(x) for x in labels] != list(LABELS):
        raise ValueError(f"{path}: answer labels {list(labels)}, expected {list(LABELS)}")


def make_split(
    source: str,
    *,
    qid,
    game_id,
    turn,
    answer,
    target_category,
    target_box,
    pooled,
    target_vision=None,
    question=None,
    attrs: dict | None = None,
) -> Split:
    """Build and validate a Split from arrays (rows contiguous per game, in dialogue order)."""
    qid, game_id = np.asarray(qid, dtype=np.int64), np.asarray(game_id, dtype=np.int64)
    if len(qid) == 0:
        raise ValueError(f"{source}: the split is empty (no questions); check the status filter used by extract")
    pooled = np.asarray(pooled)
    if pooled.ndim != 2 or pooled.shape[0] != len(qid):
        raise ValueError(f"{source}: pooled has shape {pooled.shape}, expected [{len(qid)}, H]")
    if target_vision is not None and np.shape(target_vision) != pooled.shape:
        raise ValueError(f"{source}: target_vision has shape {np.shape(target_vision)}, pooled {pooled.shape}")
    for name, features in (("pooled", pooled), ("target_vision", target_vision)):
        if features is not None:
            _check_finite(source, name, features, qid)
    starts = _game_starts(source, game_id, qid)
    turn = np.asarray(turn, dtype=np.int16)
    expected = np.arange(len(qid)) - np.repeat(starts[:-1], np.diff(starts))
    wrong = np.flatnonzero(turn != expected)
    if len(wrong):
        raise ValueError(
            f"{source}: question {qid[wrong[0]]} is turn {turn[wrong[0]]} but row {expected[wrong[0]]} "
            f"of game {game_id[wrong[0]]}; rows must be in dialogue order"
        )
    return Split(
        source=source,
        qid=qid,
        game_id=game_id,
        turn=turn,
        answer=np.asarray(answer, dtype=np.int8),
        target_category=np.asarray(target_category, dtype=np.int16),
        target_box=np.asarray(target_box, dtype=np.float32).reshape(len(qid), 4),
        pooled=pooled,
        target_vision=None if target_vision is None else np.asarray(target_vision),
        starts=starts,
        question=question,
        attrs=attrs or {},
    )


def _check_finite(source: str, name: str, features: np.ndarray, qid: np.ndarray) -> None:
    for begin in range(0, len(features), _CHECK_ROWS):
        bad = np.flatnonzero(~np.isfinite(features[begin : begin + _CHECK_ROWS]).all(axis=1))
        if len(bad):
            qids = ", ".join(str(q) for q in qid[begin + bad[:5]])
            raise ValueError(f"{source}: {name} has NaN/inf features, first at questions {qids}; re-extract them")


def _game_starts(source: str, game_id: np.ndarray, qid: np.ndarray) -> np.ndarray:
    boundaries = np.flatnonzero(game_id[1:] != game_id[:-1]) + 1
    starts = np.concatenate([[0], boundaries, [len(game_id)]]).astype(np.int64)
    run_ids = game_id[starts[:-1]]
    if len(np.unique(run_ids)) != len(run_ids):
        values, counts = np.unique(run_ids, return_counts=True)
        game = values[counts > 1][0]
        first = qid[game_id == game][0]
        raise ValueError(
            f"{source}: game {game} (question {first}) is split over separate rows; rows must be contiguous per game"
        )
    return starts


def feature_stats(split: Split, target_vision: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of pooled (then target_vision) over all rows, in chunks (fp16 stays fp16)."""
    arrays = [split.pooled] + ([split.target_vision] if target_vision else [])
    total = np.zeros(sum(a.shape[1] for a in arrays))
    squares = np.zeros_like(total)
    for begin in range(0, len(split.qid), _CHECK_ROWS):
        chunk = np.concatenate([a[begin : begin + _CHECK_ROWS] for a in arrays], axis=1).astype(np.float64)
        total += chunk.sum(axis=0)
        squares += (chunk**2).sum(axis=0)
    mean = total / len(split.qid)
    std = np.sqrt(np.maximum(squares / len(split.qid) - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def previous_answers(split: Split) -> np.ndarray:
    """Per row: gold answer of the turn before; PREVIOUS_START at turn 0, PREVIOUS_UNKNOWN if not known."""
    previous = np.empty(len(split.qid), dtype=np.int64)
    previous[1:] = split.answer[:-1]
    previous[previous == UNKNOWN] = PREVIOUS_UNKNOWN
    previous[split.starts[:-1]] = PREVIOUS_START
    return previous


def make_batch(split: Split, games: np.ndarray, previous: np.ndarray | None = None) -> Batch:
    """Pad the games with these indices into one Batch (`previous`: previous_answers, computed once)."""
    starts, lengths = split.starts[games], split.lengths[games]
    longest = int(lengths.max())
    offsets = np.arange(longest)
    valid = offsets[None, :] < lengths[:, None]  # [B, T]
    rows = np.where(valid, starts[:, None] + offsets[None, :], -1)
    safe = np.where(valid, rows, starts[:, None])  # padding reads the game's first row, then is masked
    if previous is None:
        previous = previous_answers(split)
    answer = split.answer[safe].astype(np.int64)
    labels = np.where(valid & (answer != UNKNOWN), answer, IGNORE_INDEX)

    mask, real_rows = torch.from_numpy(valid), rows[valid]

    def features(array: np.ndarray) -> torch.Tensor:  # gather only real rows: padding is most of [B, T]
        padded = torch.zeros(len(games), longest, array.shape[1])
        padded[mask] = torch.from_numpy(array[real_rows]).float()
        return padded

    return Batch(
        rows=torch.from_numpy(rows),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        pooled=features(split.pooled),
        target_vision=None if split.target_vision is None else features(split.target_vision),
        previous=torch.from_numpy(np.where(valid, previous[safe], PREVIOUS_UNKNOWN)),
        category=torch.from_numpy(split.target_category[starts].astype(np.int64)),
        box=torch.from_numpy(split.target_box[starts]),
        labels=torch.from_numpy(labels),
    )


def batches(split: Split, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[Batch]:
    """Batches of `batch_size` games in file order, or shuffled by `rng`.

    Shuffled batches are bucketed: the shuffled games are cut into pools of BUCKET_POOL batches, each pool is
    sorted by length, and the batch order is shuffled again. Games of similar length then share a batch, which
    roughly halves the LSTM's time steps per epoch on GuessWhat's long-tailed lengths.
    """
    previous = previous_answers(split)
    if rng is None:
        for begin in range(0, split.num_games, batch_size):
            yield make_batch(split, np.arange(begin, min(begin + batch_size, split.num_games)), previous)
        return
    order = rng.permutation(split.num_games)
    pool = batch_size * BUCKET_POOL
    for begin in range(0, len(order), pool):
        games = order[begin : begin + pool]
        order[begin : begin + pool] = games[np.argsort(split.lengths[games], kind="stable")]
    for begin in rng.permutation(np.arange(0, len(order), batch_size)):
        yield make_batch(split, order[begin : begin + batch_size], previous)


def num_batches(split: Split, batch_size: int) -> int:
    return -(-split.num_games // batch_size)
