"""Stage-two training speed: the prior system's one-game-per-step loop vs our batched epoch, and peak memory.

A synthetic oracle cache shaped like GuessWhat train (95,429 successful games; dialogue lengths geometric
with mean ≈ 5, capped at 30; 768-d fp16 pooled and target_vision). Prints the prior loop's epoch time (LSTM
768→200, softmax + CrossEntropyLoss, one game per optimizer step; timed on a sample of games and scaled), our
epoch time with the same model (`--preset seed`, 64 games per batch) and with the default model, the ratio,
and the peak resident memory against the cache size. Goals on 2 CPU cores: ratio ≥ 50, our epoch ≤ 60 s,
peak ≤ 2× cache.

Measured on the 2-core development machine (torch 2.13 CPU, full size, idle, 2026-12-04): prior loop 269 s
(≈ 2.8 ms per game from memory), ours with the same model 30.7 s, ratio 9× (an earlier, noisier run: 402 s vs
28 s, 14×); default model 78 s; peak RSS 2.00 GiB = 1.34× the 1.49 GiB cache. Ours is compute-bound (≈ 75-80
GFLOP/s of LSTM matmuls on 2 cores, fp32; bf16 is slower on this CPU), while the prior loop spends most of its
time in per-step overhead; ≥ 50× would need ours under 6 s, below what these FLOPs take on 2 cores. On a GPU
the same epoch is a few seconds.

    python benchmarks/train_bench.py                 # full size (writes a 1.5 GB cache to a temp dir)
    python benchmarks/train_bench.py --games 5000    # quick
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from classify.data import SCHEMA_VERSION, read_split
from classify.model import build_model
from classify.train import TrainConfig, train_epoch

TRAIN_GAMES = 95_429
HIDDEN = 768
ROWS_PER_WRITE = 32_768


def write_synthetic_cache(path: Path, games: int, seed: int = 0) -> int:
    """A cache in the schema of extract/cache.py, written in slices (the writer stays small); returns rows."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 5.2, size=games), 30)
    rows = int(lengths.sum())
    game_id = np.repeat(np.arange(games), lengths)
    turn = np.arange(rows) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    with h5py.File(path, "w") as h5:
        h5["qid"] = np.arange(rows, dtype=np.int64)
        h5["game_id"] = game_id.astype(np.int64)
        h5["turn"] = turn.astype(np.int16)
        h5["answer"] = rng.choice(3, size=rows, p=[0.52, 0.46, 0.02]).astype(np.int8)
        h5["question"] = np.array(["is it the one on the left?"] * rows, dtype=h5py.string_dtype())
        h5["image"] = np.array(["COCO_train2014_000000000001"] * rows, dtype=h5py.string_dtype())
        h5["target_category"] = np.repeat(rng.integers(1, 91, size=games), lengths).astype(np.int16)
        h5["target_box"] = rng.uniform(0, 1, size=(rows, 4)).astype(np.float32)
        for name in ("pooled", "target_vision"):
            dataset = h5.create_dataset(name, shape=(rows, HIDDEN), dtype=np.float16, chunks=(256, HIDDEN))
            for begin in range(0, rows, ROWS_PER_WRITE):
                end = min(begin + ROWS_PER_WRITE, rows)
                dataset[begin:end] = rng.standard_normal(size=(end - begin, HIDDEN), dtype=np.float32)
        h5.attrs.update(schema_version=SCHEMA_VERSION, answer_labels=["No", "Yes", "N/A"], hidden_size=HIDDEN,
                        model="synthetic")  # fmt: skip
    return rows


def prior_epoch_seconds(path: Path, sample_games: int, total_games: int) -> float:
    """The prior loop: one game per step, LSTM 768→200 → Linear → softmax → CrossEntropyLoss, Adam; scaled."""
    split = read_split(path, target_vision=False)
    lstm, head = nn.LSTM(HIDDEN, 200, batch_first=True), nn.Linear(200, 3)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-3)
    loss_function = nn.CrossEntropyLoss()
    order = np.random.default_rng(0).permutation(split.num_games)[:sample_games]
    start = time.perf_counter()
    for game in order:
        rows = slice(split.starts[game], split.starts[game + 1])
        features = torch.from_numpy(split.pooled[rows].astype(np.float32))[None]  # [1, T, 768]
        labels = torch.from_numpy(split.answer[rows].astype(np.int64))
        output, _ = lstm(features)
        probs = head(output[0]).softmax(dim=-1)  # the prior bug; costs the same time as logits
        loss = loss_function(probs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) * total_games / len(order)


def our_epoch_seconds(path: Path, spec_changes: dict, max_batches: int | None) -> tuple[float, int]:
    """One epoch of classify.train.train_epoch (64 games per batch), scaled when `max_batches` cuts it."""
    config = TrainConfig(train=path, valid=path, out=path.parent / "unused", **spec_changes)
    split = read_split(path, target_vision=config.target_vision)
    torch.manual_seed(0)
    model = build_model(config.spec(split.feature_size, 91))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    limited = split if max_batches is None else _first_games(split, max_batches * config.batch_size)
    start = time.perf_counter()
    train_epoch(model, optimizer, limited, config, np.random.default_rng(0), "cpu", 1)
    seconds = (time.perf_counter() - start) * split.num_games / limited.num_games
    return seconds, sum(p.numel() for p in model.parameters())


def _first_games(split, games: int):
    from dataclasses import replace

    games = min(games, split.num_games)
    rows = int(split.starts[games])
    names = ("qid", "game_id", "turn", "answer", "target_category", "target_box", "pooled")
    cut = {name: getattr(split, name)[:rows] for name in names}
    vision = None if split.target_vision is None else split.target_vision[:rows]
    return replace(split, starts=split.starts[: games + 1], target_vision=vision, **cut)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=TRAIN_GAMES, help="games in the synthetic cache")
    parser.add_argument("--prior-sample", type=int, default=2000, help="games timed for the prior loop")
    parser.add_argument("--default-batches", type=int, default=300, help="batches timed for the default model")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "train.h5"
        start = time.perf_counter()
        rows = write_synthetic_cache(path, args.games)
        size = path.stat().st_size
        print(
            f"synthetic cache: {args.games} games, {rows} questions (mean {rows / args.games:.2f} per game), "
            f"{size / 2**30:.2f} GiB, written in {time.perf_counter() - start:.0f} s"
        )
        prior = prior_epoch_seconds(path, args.prior_sample, args.games)
        print(f"prior loop (one game per step, LSTM 768→200), scaled from {args.prior_sample} games: {prior:.0f} s")
        seed, params = our_epoch_seconds(path, {"preset": "seed"}, None)
        print(f"ours, same model (--preset seed, {params} parameters), full epoch: {seed:.1f} s")
        lstm_flops = 3 * 2 * rows * 4 * 200 * (HIDDEN + 200)  # forward + backward ≈ 3 × the forward matmuls
        print(f"ratio: {prior / seed:.0f}x; ours runs the LSTM matmuls at {lstm_flops / seed / 1e9:.0f} GFLOP/s")
        default, params = our_epoch_seconds(path, {}, args.default_batches)
        print(f"ours, default dialogue model ({params} parameters, target vision + answers + target), "
              f"scaled from {args.default_batches} batches: {default:.0f} s")  # fmt: skip
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
        print(f"peak resident memory: {peak / 2**30:.2f} GiB = {peak / size:.2f}x the cache size")


if __name__ == "__main__":
    main()
