"""Evaluation: trained runs and/or a predictions file scored on gold answers, as tables and report.json.

Input: `EvaluateConfig` (the `pipeline evaluate` options); gold answers from a cache, or `Questions` built by
the caller from a games file. Output: (report dict, table text); the report is also written as JSON. A run
with answer feedback gets two columns: own answers fed back (the honest number) and gold history.

    report, text = evaluate(EvaluateConfig(run=(Path("runs/turn"), Path("runs/dialogue")),
                                           cache=Path("cache/test.h5")), device="cpu")
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classify.data import LABELS, Split, batches, read_split
from classify.metrics import Questions, format_report, score
from classify.model import answer_dialogues
from classify.run import check_split, checkpoint_path, load_model

log = logging.getLogger(__name__)

_LABEL_IDS = {"no": 0, "yes": 1, "n/a": 2, "na": 2, "0": 0, "1": 1, "2": 2}


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of `pipeline evaluate` (option names are the field names)."""

    run: tuple[Path, ...] = field(
        default=(),
        metadata={"help": "Run directory from `pipeline train` (repeat to compare runs side by side)."},
    )
    cache: Path | None = field(
        default=None, metadata={"help": "Oracle cache with gold answers (and features for --run)."}
    )
    predictions: Path | None = field(
        default=None,
        metadata={"help": "Predictions to score: qid,answer CSV or JSONL with qid and answer fields."},
    )
    games: Path | None = field(
        default=None,
        metadata={"help": "Games file with gold answers for --predictions (instead of --cache)."},
    )
    status: str = field(default="success", metadata={"help": "Game statuses kept from --games ('all' or a list)."})
    subset: Path | None = field(
        default=None,
        metadata={"help": "Also score only these qids: one per line, or CSV with a question_id column."},
    )
    out: Path | None = field(
        default=None,
        metadata={"help": "report.json path (default: in the first run dir, else beside --predictions)."},
    )
    batch_size: int = field(default=256, metadata={"help": "Games per batch."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})

    def __post_init__(self) -> None:
        if not self.run and self.predictions is None:
            raise ValueError("give --run RUN (with --cache) or --predictions FILE (with --cache or --games)")
        if self.cache is not None and self.games is not None:
            raise ValueError("give gold answers with one of --cache or --games, not both")
        if self.run and self.cache is None:
            raise ValueError("--run needs --cache: the model reads its features from the cache")
        if self.predictions is not None and self.cache is None and self.games is None:
            raise ValueError("--predictions needs gold answers: add --cache FILE or --games FILE")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")

    def report_path(self) -> Path:
        if self.out is not None:
            if self.out.is_dir():
                raise IsADirectoryError(f"--out {self.out}: is a directory; give a file name such as report.json")
            return self.out
        if self.run:
            return Path(self.run[0]) / "report.json"
        return self.predictions.with_name(self.predictions.name + ".report.json")


def evaluate(
    config: EvaluateConfig, device: str | torch.device, questions: Questions | None = None
) -> tuple[dict, str]:
    """Score every run and the predictions file; write report.json; return the report and the tables."""
    models = [(run, *load_model(run, device)) for run in config.run]
    split = None
    if config.cache is not None:
        vision = any(checkpoint["spec"]["target_vision"] for _, _, checkpoint in models)
        split = read_split(config.cache, target_vision=vision, questions=True)
        questions = Questions(split.qid, split.game_id, split.answer, split.question)
    if questions is None:
        raise ValueError("no gold answers: give --cache or --games")
    if not (np.asarray(questions.answer) >= 0).any():
        raise ValueError(
            f"{config.cache or config.games}: no question with a gold answer to score ({len(questions.qid)} "
            "questions" + (f" in games with status {config.status})" if config.games else ")")
        )
    columns = {}  # name → (description, predicted labels [N])
    for run, model, checkpoint in models:
        check_split(checkpoint, split, run)
        name = _unique(Path(run).name or str(run), columns)
        for history in ("own", "gold") if model.spec.uses_feedback else ("own",):
            label = name if not model.spec.uses_feedback else f"{name} {history}"
            probs = answer_split(model, split, config.batch_size, device, history)
            columns[label] = (
                {
                    "run": str(checkpoint_path(run)),
                    "history": history,
                    "spec": model.spec.to_dict(),
                    "epoch": checkpoint["epoch"],
                },
                probs.argmax(axis=1),
            )
    if config.predictions is not None:
        name = _unique(config.predictions.name, columns)
        columns[name] = (
            {"predictions": str(config.predictions)},
            align(read_predictions(config.predictions), questions),
        )
    statuses = str(split.attrs.get("status_filter", "unknown")) if split is not None else config.status
    return _report(config, questions, columns, statuses)


def _report(config: EvaluateConfig, questions: Questions, columns: dict, statuses: str) -> tuple[dict, str]:
    context = questions.context()
    gold_source = str(config.cache or config.games)
    report = {"gold": gold_source, "game_statuses": statuses, "questions": len(questions.qid), "columns": {}}
    scored = {name: score(questions, predicted, context=context) for name, (_, predicted) in columns.items()}
    text = [f"All questions of {gold_source} (games: {statuses})\n\n" + format_report(list(scored.items()))]
    subset_scores = {}
    if config.subset is not None:
        mask = np.isin(questions.qid, read_subset(config.subset))
        report["subset"] = {"file": str(config.subset), "questions": int(mask.sum())}
        subset_scores = {name: score(questions, predicted, mask, context) for name, (_, predicted) in columns.items()}
        text.append(
            f"Subset {config.subset} ({int(mask.sum())} questions)\n\n" + format_report(list(subset_scores.items()))
        )
    for name, (description, _) in columns.items():
        report["columns"][name] = {**description, "all": scored[name]}
        if name in subset_scores:
            report["columns"][name]["subset"] = subset_scores[name]
    path = config.report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    log.info("wrote %s", path)
    return report, "\n\n\n".join(text)


def _unique(name: str, taken: dict) -> str:
    candidate, index = name, 2
    while any(key == candidate or key.startswith(candidate + " ") for key in taken):
        candidate, index = f"{name}#{index}", index + 1
    return candidate


def answer_split(
    model: nn.Module, split: Split, batch_size: int, device: str | torch.device, history: str = "own"
) -> np.ndarray:
    """Answer probabilities [N, 3] for every row of the split, in row order (see model.answer_dialogues)."""
    probs = np.zeros((len(split.qid), len(LABELS)), dtype=np.float32)
    for batch in batches(split, batch_size):
        rows = batch.rows
        batch_probs = answer_dialogues(model, batch.to(device), history).cpu()
        valid = rows >= 0
        probs[rows[valid].numpy()] = batch_probs[valid].numpy()
    return probs


def parse_label(value: object) -> int:
    """'Yes', 'yes', '<yes>', 'N/A', 'NA' or a label id → 0, 1, 2; KeyError otherwise."""
    return _LABEL_IDS[str(value).strip().strip("<>").strip().casefold()]


def read_predictions(path: Path) -> dict[int, int]:
    """qid → label from a `qid,answer` CSV (header optional) or JSONL (objects with qid and answer)."""
    if not path.is_file():
        raise FileNotFoundError(f"--predictions {path}: no such file")
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as handle:
        text = handle.read()
    first = next((line for line in text.splitlines() if line.strip()), "")
    records = _json_records(text, path) if first.lstrip().startswith("{") else _csv_records(text, path)
    predictions, lines = {}, {}
    for where, qid, answer in records:
        try:
            qid, label = int(qid), parse_label(answer)
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{where}: bad prediction (qid {qid!r}, answer {answer!r}); answers are Yes, No or N/A"
            ) from None
        if qid in predictions:
            raise ValueError(f"{where}: a second prediction for qid {qid} (first at {lines[qid]})")
        predictions[qid], lines[qid] = label, where
    if not predictions:
        raise ValueError(f"{path}: no predictions found")
    return predictions


def _json_records(text: str, path: Path):
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: malformed JSON ({error.msg})") from None
        nested = next((record[k] for k in ("turns", "qas", "questions") if isinstance(record.get(k), list)), None)
        for item in nested if nested is not None else [record]:
            qid = next((item[k] for k in ("qid", "question_id", "id") if k in item), None)
            yield f"{path}:{number}", qid, item.get("answer", item.get("a"))


def _csv_records(text: str, path: Path):
    rows = list(csv.reader(io.StringIO(text)))
    header = [cell.strip().casefold() for cell in rows[0]] if rows else []
    has_header = bool(header) and not header[0].lstrip("-").isdigit()
    qid_column = next((header.index(k) for k in ("qid", "question_id") if k in header), 0) if has_header else 0
    answer_column = header.index("answer") if has_header and "answer" in header else 1
    for number, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        if row:
            if len(row) <= max(qid_column, answer_column):
                raise ValueError(f"{path}:{number}: expected qid,answer, got {row}")
            yield f"{path}:{number}", row[qid_column], row[answer_column]


def align(predictions: dict[int, int], questions: Questions) -> np.ndarray:
    """Predicted labels in the order of `questions`; every gold question must have a prediction."""
    missing = [int(q) for q in questions.qid if int(q) not in predictions]
    if missing:
        raise ValueError(
            f"no prediction for {len(missing)} of {len(questions.qid)} gold questions, first qids "
            f"{missing[:5]}; is it the same split and status filter?"
        )
    extra = len(predictions) - len(questions.qid)
    if extra > 0:
        log.warning("%d predictions have no gold question (other games or statuses): not scored", extra)
    return np.array([predictions[int(q)] for q in questions.qid], dtype=np.int64)


def read_subset(path: Path) -> np.ndarray:
    """qids from a file of one qid per line, or a CSV with a question_id (or qid) column."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--subset {path}: no such file")
    rows = [row for row in csv.reader(io.StringIO(Path(path).read_text(encoding="utf-8"))) if row and row[0].strip()]
    header = [cell.strip().casefold() for cell in rows[0]] if rows else []
    column = next((header.index(k) for k in ("question_id", "qid") if k in header), None)
    if column is None and header and not header[0].strip().isdigit():
        raise ValueError(f"{path}: expected one qid per line or a CSV with a question_id column, got {rows[0]}")
    body = rows[1:] if column is not None else rows
    try:
        return np.array([int(row[column or 0]) for row in body], dtype=np.int64)
    except (ValueError, IndexError):
        raise ValueError(f"{path}: a row without an integer question id") from None
