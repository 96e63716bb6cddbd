"""Stage-one throughput: our batched extractor vs the prior per-question loop, in one run.

A randomly initialised LXMERT of base size (hidden 768, 9/5/5 layers), synthetic games of 5 questions (GuessWhat
averages 5.2) sharing 36 regions of 2048-d features. Prints questions/s of a batch-1 loop (how the prior system
extracted), of our `Encoder.encode`, and the ratio; on CUDA also bf16 questions/s. Goal on 2 CPU cores: ratio
≥ 3.5; on one H200-class GPU: ≥ 5,000 q/s bf16.

Measured on the 2-core development machine, idle (2026-12-04): prior loop 6.0-7.3 q/s, ours 23.7-24.5 q/s,
ratio 3.4-4.0x. Batching alone gave 17 q/s (2.5-2.8x); running the vision layers once per game (extract.vision)
gave the rest.

    python benchmarks/extract_bench.py --questions 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertTokenizer, LxmertConfig, LxmertModel

from extract.encoder import Encoder, Example, OracleSettings, Visual, collate, lxmert_forward

WORDS = "is it a the on left right red blue cup dog person in front of car white black one near table".split()


def make_examples(n: int, rng: np.random.Generator, per_game: int = 5) -> list[Example]:
    """`n` questions in games of `per_game` (GuessWhat: 5.2 on average) that share their regions and target."""
    examples = []
    for start in range(0, n, per_game):
        x1y1 = rng.uniform(0, 0.7, size=(36, 2))
        boxes = np.concatenate([x1y1, x1y1 + rng.uniform(0.05, 0.3, size=(36, 2))], axis=1).astype(np.float32)
        visual = Visual(rng.normal(size=(36, 2048)).astype(np.float32), boxes)
        for _ in range(min(per_game, n - start)):
            question = " ".join(rng.choice(WORDS, size=rng.integers(3, 12))) + " ?"
            examples.append(Example(question, visual))
    return examples


def base_encoder(directory: Path, device: str, precision: str) -> Encoder:
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *WORDS]) + "\n")
    tokenizer = BertTokenizer.from_pretrained(directory)
    model = LxmertModel(LxmertConfig(l_layers=9, x_layers=5, r_layers=5))  # base size, random weights
    return Encoder(model, tokenizer, OracleSettings(), {}, device=device, precision=precision)


@torch.no_grad()
def prior_loop(encoder: Encoder, examples: list[Example]) -> float:
    """One question per forward pass, its tokens zero-padded to max_seq_length (32) as LXMERT's released
    `convert_sents_to_features` does: how the prior system extracted."""
    start = time.perf_counter()
    for example in examples:
        batch = collate([example], encoder.tokenizer, 32)
        text = encoder.tokenizer([example.question], padding="max_length", max_length=32, return_tensors="pt")
        batch.update(
            input_ids=text["input_ids"], attention_mask=text["attention_mask"], token_type_ids=text["token_type_ids"]
        )
        lxmert_forward(encoder.model, {k: v.to(encoder.device) for k, v in batch.items()})
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(examples) / (time.perf_counter() - start)


def ours(encoder: Encoder, examples: list[Example], batch_size: int) -> float:
    start = time.perf_counter()
    encoder.encode(examples, batch_size=batch_size)
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(examples) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    examples = make_examples(args.questions, rng)
    with tempfile.TemporaryDirectory() as tmp:
        encoder = base_encoder(Path(tmp), device, "fp32")
        ours(encoder, examples[:8], args.batch_size)  # warm-up
        baseline = prior_loop(encoder, examples[: max(args.questions // 4, 20)])
        fast = ours(encoder, examples, args.batch_size)
        print(f"device {device}, threads {torch.get_num_threads()}, {args.questions} questions, 36 regions")
        print(f"prior per-question loop: {baseline:8.1f} q/s")
        print(f"ours (fp32, batch {args.batch_size}):  {fast:8.1f} q/s")
        print(f"ratio: {fast / baseline:.2f}x  (goal >= 3.5x on 2 CPU cores)")
        if device == "cuda":
            bf16 = Encoder(encoder.model, encoder.tokenizer, OracleSettings(), {}, device=device, precision="bf16")
            big = make_examples(max(args.questions, 4096), rng)
            ours(bf16, big[:512], 512)
            print(f"ours (bf16, batch 512): {ours(bf16, big, 512):8.1f} q/s  (goal >= 5000 on an H200)")


if __name__ == "__main__":
    main()
