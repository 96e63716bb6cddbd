"""classify.metrics and evaluation inputs: every table on a hand-made example with hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classify.evaluate import align, parse_label, read_predictions, read_subset
from classify.metrics import Questions, format_report, score
from classify.questions import question_type

NO, YES, NA, UNKNOWN = 0, 1, 2, -1

# game 10: four questions; game 20: two scored, one unknown gold answer; game 30: ten "other" questions
QUESTIONS = Questions(
    qid=list(range(1, 8)) + list(range(101, 111)),
    game_id=[10] * 4 + [20] * 3 + [30] * 10,
    answer=[YES, NO, NA, YES, NO, NO, UNKNOWN] + [NO] * 10,
    question=[
        "is it red?",
        "is it on the left?",
        "is it a dog?",
        "is it an animal?",
        "is it the big one?",
        "what?",
        "is it blue?",
    ]
    + ["is it this?"] * 10,
)
PREDICTED = np.array([YES, YES, NO, YES, NO, NA, YES] + [NO] * 9 + [YES])


def _accuracies(table: dict) -> dict:
    """{group: (questions, accuracy rounded to 9 places)} of the non-empty groups: comparable with == (pytest
    9.2's approx refuses nested containers)."""
    return {group: (c["questions"], round(c["accuracy"], 9)) for group, c in table.items() if c["questions"]}


def _rounded(expected: dict) -> dict:
    return {group: (count, round(accuracy, 9)) for group, (count, accuracy) in expected.items()}


def test_overall_classes_and_confusion_by_hand():
    scores = score(QUESTIONS, PREDICTED)
    assert scores["questions"] == 16  # the unknown gold answer is not scored
    assert scores["accuracy"] == pytest.approx(12 / 16)
    assert scores["confusion"] == [
        [10, 2, 1],
        [0, 2, 0],
        [1, 0, 0],
    ]  # rows gold No/Yes/N/A, columns predicted
    no, yes, na = (scores["classes"][label] for label in ("No", "Yes", "N/A"))
    assert (no["precision"], no["recall"], no["f1"], no["support"]) == pytest.approx((10 / 11, 10 / 13, 20 / 24, 13))
    assert (yes["precision"], yes["recall"], yes["f1"], yes["support"]) == pytest.approx((0.5, 1.0, 2 / 3, 2))
    assert (na["precision"], na["recall"], na["f1"], na["support"]) == (0.0, 0.0, 0.0, 1)
    assert scores["macro_f1"] == pytest.approx((20 / 24 + 2 / 3 + 0) / 3)


def test_a_class_that_occurs_nowhere_is_undefined_not_zero():
    gold = Questions(qid=[1, 2, 3], game_id=[1, 1, 1], answer=[NO, YES, NO], question=["is it red?"] * 3)
    scores = score(gold, np.array([NO, NO, NO]))  # no N/A in gold or predictions; Yes never predicted
    na, yes = scores["classes"]["N/A"], scores["classes"]["Yes"]
    assert (na["precision"], na["recall"], na["f1"]) == (None, None, None)
    assert (yes["precision"], yes["recall"], yes["f1"]) == (None, 0.0, 0.0)
    assert scores["macro_f1"] == pytest.approx((0.8 + 0.0) / 2)  # No: P 2/3, R 1 → F1 0.8
    assert [
        line.split()[-1] for line in format_report([("all no", scores)]).splitlines() if line.startswith("N/A ")
    ] == ["-"] * 3


def test_accuracy_by_turn_previous_answer_earlier_yes_and_type_by_hand():
    scores = score(QUESTIONS, PREDICTED)
    expected_turns = {"1": (3, 1.0), "2": (3, 1 / 3), "3": (2, 0.5), "4": (2, 1.0), ">=10": (1, 0.0)}
    expected_turns.update({str(t): (1, 1.0) for t in range(5, 10)})
    assert _accuracies(scores["by_turn"]) == _rounded(expected_turns)
    assert _accuracies(scores["by_previous"]) == _rounded(
        {"first question": (3, 1.0), "after Yes": (1, 0.0), "after No": (11, 8 / 11), "after N/A": (1, 1.0)}
    )
    assert _accuracies(scores["earlier_yes"]) == _rounded(
        {"after an earlier Yes": (3, 1 / 3), "no earlier Yes": (13, 11 / 13)}
    )
    assert _accuracies(scores["by_type"]) == _rounded(
        {
            "color": (1, 1.0),
            "location": (1, 0.0),
            "object": (1, 0.0),
            "super-category": (1, 1.0),
            "size": (1, 1.0),
            "other": (11, 9 / 11),
        }
    )
    assert scores["by_turn"]["3"]["questions"] == 2 and scores["by_type"]["number"]["accuracy"] is None


def test_subset_keeps_the_context_of_the_whole_game():
    scores = score(QUESTIONS, PREDICTED, mask=np.isin(QUESTIONS.qid, [2, 3, 4, 5]))
    assert scores["questions"] == 4 and scores["accuracy"] == 0.5
    # question 2 follows a Yes even though question 1 is outside the subset
    assert _accuracies(scores["by_previous"]) == {
        "first question": (1, 1.0),
        "after Yes": (1, 0.0),
        "after No": (1, 0.0),
        "after N/A": (1, 1.0),
    }


def test_report_text_shows_every_table_side_by_side():
    text = format_report([("turn", score(QUESTIONS, PREDICTED)), ("dialogue", score(QUESTIONS, QUESTIONS.answer))])
    for title in (
        "Overall",
        "Per class",
        "Confusion, turn",
        "Confusion, dialogue",
        "Accuracy by turn",
        "Accuracy by previous gold answer",
        "Accuracy after an earlier Yes",
        "Accuracy by question type",
    ):
        assert title in text
    overall = text.split("\n\n")[0].splitlines()
    assert overall[1].split() == ["turn", "dialogue"]
    assert overall[3].split() == ["accuracy", "75.0", "100.0"]
    assert ">=10 (n=1)" in text and "after N/A (n=1)" in text


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("is it the red car?", "color"),
        ("is it round?", "shape"),
        ("the tallest one?", "size"),
        ("is it wooden?", "texture"),
        ("is he surfing?", "action"),
        ("is it next to the cup?", "location"),
        ("are there 2 of them?", "number"),
        ("is it a traffic light?", "object"),
        ("is it a dog?", "object"),
        ("is it a person?", "super-category"),
        ("is it food?", "super-category"),
        ("can you eat it?", "other"),
        ("is it the one with the hat?", "super-category"),  # "one" is a pronoun, not a number
        ("is it clothes?", "super-category"),  # not "cloth" (texture)
        ("is it the shorts?", "super-category"),  # not "short" (size)
        ("are they cups?", "object"),
    ],
)
def test_question_types(question, kind):
    assert question_type(question) == kind


def test_predictions_files_in_every_spelling(tmp_path):
    (tmp_path / "with_header.csv").write_text("qid,answer\n1,Yes\n2,no\n3,<n/a>\n")
    (tmp_path / "plain.csv").write_text("1,<yes>\n2,No\n3,N/A\n")
    rows = [
        {"qid": 1, "answer": "Yes"},
        {"qid": 2, "answer": "No"},
        {"qid": 3, "answer": "N/A", "game_id": 10},
    ]
    (tmp_path / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("with_header.csv", "plain.csv", "predictions.jsonl"):
        assert read_predictions(tmp_path / name) == {1: YES, 2: NO, 3: NA}
    (tmp_path / "bad.csv").write_text("1,maybe\n")
    with pytest.raises(ValueError, match="bad.csv:1: bad prediction"):
        read_predictions(tmp_path / "bad.csv")
    assert parse_label(" YES ") == YES


def test_missing_predictions_are_an_error_naming_qids():
    with pytest.raises(ValueError, match=r"no prediction for 16 of 17 gold questions, first qids \[2, 3"):
        align({1: YES, 999: NO}, QUESTIONS)


def test_subset_files(tmp_path):
    (tmp_path / "lines.txt").write_text("5\n7\n\n9\n")
    (tmp_path / "table.csv").write_text("game_id,question_id,why\n10,5,history\n20,7,history\n")
    assert read_subset(tmp_path / "lines.txt").tolist() == [5, 7, 9]
    assert read_subset(tmp_path / "table.csv").tolist() == [5, 7]
    (tmp_path / "bad.csv").write_text("game,why\n1,2\n")
    with pytest.raises(ValueError, match="question_id column"):
        read_subset(tmp_path / "bad.csv")
