"""Scores of predicted answers against gold ones, and the text tables `pipeline evaluate` prints.

Input: `Questions` (gold answers and question text, rows contiguous per game in dialogue order) and one
predicted label per row. Output: a JSON-ready dict of tables — overall accuracy, per-class precision, recall
and F1, macro-F1, 3×3 confusion (rows gold, columns predicted), and accuracy by turn, by previous gold answer,
after an earlier Yes, and by question type. Questions with an unknown gold answer are not scored. Context
(turn, previous answer, earlier Yes) comes from the whole game, also when only a subset is scored.

    scores = score(questions, predicted, mask=np.isin(questions.qid, subset))
    print(format_report([("dialogue", scores)]))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classify.data import LABELS, NUM_CLASSES, UNKNOWN
from classify.questions import OTHER, QUESTION_TYPES, question_type

TURN_GROUPS = tuple(str(t) for t in range(1, 10)) + (">=10",)
PREVIOUS_GROUPS = ("first question", "after Yes", "after No", "after N/A", "after unknown")
EARLIER_YES_GROUPS = ("after an earlier Yes", "no earlier Yes")
TYPE_GROUPS = QUESTION_TYPES + (OTHER,)
GROUPINGS = {
    "by_turn": TURN_GROUPS,
    "by_previous": PREVIOUS_GROUPS,
    "earlier_yes": EARLIER_YES_GROUPS,
    "by_type": TYPE_GROUPS,
}
TITLES = {
    "by_turn": "Accuracy by turn",
    "by_previous": "Accuracy by previous gold answer",
    "earlier_yes": "Accuracy after an earlier Yes in the game",
    "by_type": "Accuracy by question type",
}


@dataclass(frozen=True)
class Questions:
    """Gold side of an evaluation: one row per question, rows contiguous per game, in dialogue order."""

    qid: np.ndarray  # int64 [N]
    game_id: np.ndarray  # int64 [N]
    answer: np.ndarray  # int [N], UNKNOWN where not known
    question: list[str]

    def __post_init__(self) -> None:  # callers may pass lists (e.g. built from a games file)
        object.__setattr__(self, "qid", np.asarray(self.qid, dtype=np.int64))
        object.__setattr__(self, "game_id", np.asarray(self.game_id, dtype=np.int64))
        object.__setattr__(self, "answer", np.asarray(self.answer, dtype=np.int64))

    def context(self) -> dict[str, np.ndarray]:
        """Per row, its group in each of GROUPINGS (string arrays)."""
        game_id, answer = np.asarray(self.game_id), np.asarray(self.answer, dtype=np.int64)
        first = np.ones(len(game_id), dtype=bool)
        first[1:] = game_id[1:] != game_id[:-1]
        starts = np.flatnonzero(first)
        lengths = np.diff(np.append(starts, len(game_id)))
        position = np.arange(len(game_id)) - np.repeat(starts, lengths)  # 0-based turn within its game
        previous = np.full(len(game_id), "first question", dtype=object)
        names = {0: "after No", 1: "after Yes", 2: "after N/A", UNKNOWN: "after unknown"}
        previous[1:] = [names[a] for a in answer[:-1]]
        previous[first] = "first question"
        yes = (answer == 1).astype(np.int64)
        before = np.cumsum(yes) - yes  # Yes answers strictly before each row, counted from the file start
        earlier = before - np.repeat(before[starts], lengths) > 0
        return {
            "by_turn": np.array([str(p + 1) if p < 9 else ">=10" for p in position], dtype=object),
            "by_previous": previous,
            "earlier_yes": np.where(earlier, EARLIER_YES_GROUPS[0], EARLIER_YES_GROUPS[1]).astype(object),
            "by_type": np.array([question_type(q) for q in self.question], dtype=object),
        }


def score(
    questions: Questions,
    predicted: np.ndarray,
    mask: np.ndarray | None = None,
    context: dict[str, np.ndarray] | None = None,
) -> dict:
    """All tables for the rows in `mask` (default: all) whose gold answer is known."""
    gold = np.asarray(questions.answer, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    keep = gold != UNKNOWN if mask is None else (gold != UNKNOWN) & mask
    context = questions.context() if context is None else context
    g, p = gold[keep], predicted[keep]
    confusion = np.bincount(g * NUM_CLASSES + p, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
    classes, f1s = {}, []
    for k, label in enumerate(LABELS):
        true_positive, gold_k, predicted_k = confusion[k, k], confusion[k].sum(), confusion[:, k].sum()
        # undefined (None, printed "-") where nothing was predicted / nothing is gold; F1 counts those as 0
        precision = float(true_positive / predicted_k) if predicted_k else None
        recall = float(true_positive / gold_k) if gold_k else None
        f1 = None
        if gold_k or predicted_k:  # macro-F1 over the classes that occur (in gold or predictions)
            f1 = float(2 * true_positive / (gold_k + predicted_k))  # = 2PR / (P + R)
            f1s.append(f1)
        classes[label] = {"precision": precision, "recall": recall, "f1": f1, "support": int(gold_k)}
    tables = {
        "questions": int(keep.sum()),
        "accuracy": _accuracy(g, p),
        "classes": classes,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "confusion": confusion.tolist(),
    }
    for grouping, groups in GROUPINGS.items():
        labels = context[grouping][keep]
        tables[grouping] = {
            group: {
                "questions": int((labels == group).sum()),
                "accuracy": _accuracy(g[labels == group], p[labels == group]),
            }
            for group in groups
        }
    return tables


def _accuracy(gold: np.ndarray, predicted: np.ndarray) -> float | None:
    return float((gold == predicted).mean()) if len(gold) else None


def format_report(columns: list[tuple[str, dict]]) -> str:
    """Tables of several score dicts side by side, one column each; percentages, '-' for nothing scored."""
    names = [name for name, _ in columns]
    first = columns[0][1]
    blocks = [
        _table(
            "Overall",
            names,
            [
                ("questions", [str(s["questions"]) for _, s in columns]),
                ("accuracy", [_percent(s["accuracy"]) for _, s in columns]),
                ("macro-F1", [_percent(s["macro_f1"]) for _, s in columns]),
            ],
        )
    ]
    rows = [
        (f"{label} {name}", [_percent(s["classes"][label][metric]) for _, s in columns])
        for label in LABELS
        for metric, name in (("precision", "precision"), ("recall", "recall"), ("f1", "F1"))
    ]
    blocks.append(
        _table(
            "Per class (support "
            + ", ".join(f"{label} {first['classes'][label]['support']}" for label in LABELS)
            + ")",
            names,
            rows,
        )
    )
    for name, scores in columns:
        matrix = [(f"gold {label}", [str(v) for v in scores["confusion"][k]]) for k, label in enumerate(LABELS)]
        blocks.append(_table(f"Confusion, {name} (rows gold, columns predicted)", list(LABELS), matrix))
    for grouping, groups in GROUPINGS.items():
        rows = [
            (
                f"{group} (n={first[grouping][group]['questions']})",
                [_percent(s[grouping][group]["accuracy"]) for _, s in columns],
            )
            for group in groups
            if group != "after unknown" or first[grouping][group]["questions"]
        ]
        blocks.append(_table(TITLES[grouping], names, rows))
    return "\n\n".join(blocks)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _table(title: str, header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    label_width = max([len(label) for label, _ in rows] + [8])
    widths = [max([len(h)] + [len(cells[i]) for _, cells in rows]) for i, h in enumerate(header)]
    lines = [
        title,
        " " * label_width + "  " + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
    ]
    for label, cells in rows:
        lines.append(
            label.ljust(label_width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)
