"""Shared fixtures: the real sample games, a tiny LXMERT saved to disk, and synthetic region stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.encoder import question_words, save_random_lxmert
from extract.games import Game, read_games
from extract.regions import write_image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
SAMPLE = SHARED / "refdata" / "guesswhat" / "compguesswhat_sample"
FEATURE_SIZE = 16
REGIONS_PER_IMAGE = 6


def sample_path(split: str) -> Path:
    path = SAMPLE / f"compguesswhat.{split}.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"real sample games not found at {SAMPLE}")
    return path


@pytest.fixture(scope="session")
def sample_games() -> dict[str, list[Game]]:
    return {split: read_games(sample_path(split)) for split in ("train", "valid", "test")}


def save_tiny_lxmert(directory: Path, questions: list[str], feature_size: int = FEATURE_SIZE, seed: int = 0) -> Path:
    """A random LXMERT (hidden 32, 1/1/1 layers) and a tokenizer covering `questions`, saved the transformers way."""
    return save_random_lxmert(directory, question_words(questions), feature_size, hidden_size=32, layers=1, seed=seed)


@pytest.fixture(scope="session")
def tiny_lxmert(tmp_path_factory: pytest.TempPathFactory, sample_games: dict[str, list[Game]]) -> Path:
    questions = [t.question for games in sample_games.values() for g in games for t in g.turns]
    return save_tiny_lxmert(tmp_path_factory.mktemp("lxmert") / "tiny", questions)


def write_region_store(path: Path, games: list[Game], feature_size: int = FEATURE_SIZE, seed: int = 0) -> Path:
    """Regions for every image of `games`: the games' objects first, then random background boxes."""
    rng = np.random.default_rng(seed)
    images = {g.image: g for g in games}
    with h5py.File(path, "w") as h5:
        for stem, game in sorted(images.items()):
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (o.bbox for o in game.objects)][:REGIONS_PER_IMAGE]
            while len(boxes) < REGIONS_PER_IMAGE:
                x, y = rng.uniform(0, game.width / 2), rng.uniform(0, game.height / 2)
                boxes.append([x, y, x + rng.uniform(10, game.width / 2), y + rng.uniform(10, game.height / 2)])
            features = rng.normal(size=(REGIONS_PER_IMAGE, feature_size))
            write_image(h5, stem, features, np.array(boxes), game.height, game.width)
    return path


@pytest.fixture(scope="session")
def sample_regions(tmp_path_factory: pytest.TempPathFactory, sample_games: dict[str, list[Game]]) -> Path:
    games = [g for split in sample_games.values() for g in split]
    return write_region_store(tmp_path_factory.mktemp("regions") / "regions.h5", games)


def torchrun_pipeline(*args: object, processes: int = 2) -> str:
    """Run `torchrun --standalone --nproc_per_node N -m pipeline ARGS` on the CPU (gloo); its stderr, or fail."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "pipeline",
        *map(str, args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share two cores
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr
