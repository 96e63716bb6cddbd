"""Stage two: a dialogue oracle over cached per-question vectors (reads the oracle cache, never `extract`).

split = read_split(Path("cache/test.h5"))                 # or make_split(...) from in-memory arrays
model, checkpoint = load_model(Path("runs/dialogue"))      # best.pt, eval mode
check_split(checkpoint, split)
probs = answer_split(model, split, batch_size=256, device="cpu")   # [N, 3], own answers fed back
"""

from classify.data import (
    IGNORE_INDEX,
    LABELS,
    SCHEMA_VERSION,
    Batch,
    Split,
    batches,
    make_batch,
    make_split,
    read_split,
)
from classify.evaluate import EvaluateConfig, answer_split, evaluate, parse_label
from classify.metrics import Questions, format_report, score
from classify.model import DialogueOracle, OracleSpec, TurnOracle, answer_dialogues, build_model
from classify.run import check_split, load_model
from classify.train import TrainConfig, TrainResult, train

__all__ = [
    "IGNORE_INDEX",
    "LABELS",
    "SCHEMA_VERSION",
    "Batch",
    "DialogueOracle",
    "EvaluateConfig",
    "OracleSpec",
    "Questions",
    "Split",
    "TrainConfig",
    "TrainResult",
    "TurnOracle",
    "answer_dialogues",
    "answer_split",
    "batches",
    "build_model",
    "check_split",
    "evaluate",
    "format_report",
    "load_model",
    "make_batch",
    "make_split",
    "parse_label",
    "read_split",
    "score",
    "train",
]
