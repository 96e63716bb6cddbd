"""Shared builders for the classify tests: toy splits in memory and small caches of the real sample games.

The caches are written by extract's own writer with random vectors (the one place classify tests touch
extract).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classify.data import Split, make_split
from tests.conftest import sample_path

FEATURES = 16


def sample_games(split: str) -> list:
    """The real sample games (v1, successful) of one split; skip when ../shared is not there."""
    from extract.games import read_games

    return read_games(sample_path(split))


def write_sample_cache(path: Path, split: str, seed: int = 0, features: int = FEATURES, **attrs) -> Path:
    """A cache of the sample games of `split` with random feature vectors."""
    from extract.cache import write_cache

    games = sample_games(split)
    rows = sum(len(game.turns) for game in games)
    rng = np.random.default_rng(seed)
    pooled = rng.normal(size=(rows, features)).astype(np.float16)
    vision = rng.normal(size=(rows, features)).astype(np.float16)
    write_cache(path, games, pooled, vision, {"model": "random-test-vectors", **attrs})
    return path


def toy_split(lengths: list[int], features: int = 8, seed: int = 0, answers: np.ndarray | None = None) -> Split:
    """Games of the given lengths with random features; by default Yes exactly when feature 0 is positive."""
    rng = np.random.default_rng(seed)
    rows = sum(lengths)
    pooled = rng.normal(size=(rows, features)).astype(np.float16)
    if answers is None:
        answers = (pooled[:, 0] > 0).astype(np.int8)
    return make_split(
        "toy",
        qid=np.arange(1000, 1000 + rows),
        game_id=np.repeat(np.arange(len(lengths)), lengths),
        turn=np.concatenate([np.arange(n) for n in lengths] + [np.zeros(0, dtype=np.int64)]),
        answer=answers,
        target_category=np.repeat(rng.integers(1, 91, size=len(lengths)), lengths),
        target_box=np.tile(np.array([0.1, 0.2, 0.5, 0.6], dtype=np.float32), (rows, 1)),
        pooled=pooled,
        target_vision=rng.normal(size=(rows, features)).astype(np.float16),
    )
