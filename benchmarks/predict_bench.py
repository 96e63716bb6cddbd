"""Latency of `pipeline predict`'s two stages on one 5-question game, models already loaded, on this machine.

A randomly initialised LXMERT of base size (hidden 768, 9/5/5 layers), 36 regions of 2048-d features, and a
dialogue LSTM of the default size. Prints the median latency per game (encode all 5 questions in one batch, then
answer them turn by turn on the model's own answers; goal ≤ 0.5 s on 2 CPU cores) and per question in live mode
(`LiveDialogue`: one question encoded and answered given the dialogue so far).

    python benchmarks/predict_bench.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from transformers import LxmertConfig, LxmertModel

from classify.data import UNKNOWN, make_split
from classify.model import OracleSpec, build_model
from classify.predict import LiveDialogue, predict_split
from extract.cache import columns
from extract.encoder import (
    Encoder,
    Example,
    OracleSettings,
    inject_target,
    load_lxmert,
    question_words,
    save_random_lxmert,
)
from extract.games import Game, Object, Turn
from extract.job import encode_games
from extract.regions import RegionStore, write_image

QUESTIONS = ("is it a person?", "is it on the left?", "is it the red one?", "is it in front?", "the one near the cup?")


def setup(directory: Path) -> tuple[Encoder, torch.nn.Module, Game, RegionStore]:
    save_random_lxmert(directory, question_words(list(QUESTIONS)), 2048)  # for its tokenizer
    tokenizer = load_lxmert(str(directory))[1]
    base = LxmertModel(LxmertConfig(vocab_size=tokenizer.vocab_size, l_layers=9, x_layers=5, r_layers=5))
    encoder = Encoder(base, tokenizer, OracleSettings(), {}, device="cpu")
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 400, size=(36, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(20, 200, size=(36, 2))], axis=1)
    with h5py.File(directory / "regions.h5", "w") as h5:
        write_image(h5, "COCO_val2014_000000000001", rng.normal(size=(36, 2048)), boxes, 480, 640)
    turns = tuple(Turn(i + 1, q, UNKNOWN) for i, q in enumerate(QUESTIONS))
    game = Game(1, "COCO_val2014_000000000001", 640, 480, 7, (Object(7, "cup", 47, (50, 60, 100, 80)),), "", turns)
    dialogue = build_model(OracleSpec(kind="dialogue", feature_size=768)).eval()
    return encoder, dialogue, game, RegionStore(directory / "regions.h5")


def per_game(encoder: Encoder, model: torch.nn.Module, game: Game, store: RegionStore) -> float:
    start = time.perf_counter()
    pooled, vision = encode_games(encoder, [game], store, None, batch_size=64)
    cols = columns([game])
    cols.pop("question"), cols.pop("image")
    predict_split(model, make_split("bench", pooled=pooled, target_vision=vision, **cols), 64, "cpu")
    return time.perf_counter() - start


def per_question_live(encoder: Encoder, model: torch.nn.Module, game: Game, store: RegionStore) -> list[float]:
    visual = inject_target(game, store[game.image])
    live = LiveDialogue(model, game.game_id, 47, game.target_box_normalised(), "cpu")
    times = []
    for turn in game.turns:
        start = time.perf_counter()
        pooled, vision = encoder.encode([Example(turn.question, visual)])
        live.ask(pooled[0], vision[0])
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        encoder, model, game, store = setup(Path(tmp))
        per_game(encoder, model, game, store)  # warm-up
        games = [per_game(encoder, model, game, store) for _ in range(args.repeats)]
        live = [t for _ in range(args.repeats) for t in per_question_live(encoder, model, game, store)]
    print(f"threads {torch.get_num_threads()}, LXMERT base (random), 36 regions, {len(QUESTIONS)}-question game")
    print(f"per game (batch):       median {statistics.median(games):.3f} s   (goal <= 0.5 s)")
    print(f"per question (live):    median {statistics.median(live):.3f} s")


if __name__ == "__main__":
    main()
