"""`pipeline demo` on a reduced world: the dialogue model must learn what the single-turn baseline cannot."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pipeline import main


def test_reduced_demo_shows_the_dialogue_gain_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--train-games", "3000", "--test-games", "400", "--device", "cpu"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for title in ("Accuracy by question type", "Demo summary", "history", '"answer": '):
        assert title in result.output
    summary = json.loads((out / "summary.json").read_text())
    turn, dialogue = summary["accuracy"]["turn"], summary["accuracy"]["dialogue"]
    assert summary["questions"]["history"] >= 60
    for kind in ("object", "color", "location"):  # both learn the single-turn types well above chance (~50 %)
        assert turn[kind] > 0.7 and dialogue[kind] > 0.7, (kind, turn, dialogue)
    assert dialogue["history"] - turn["history"] >= 0.15, (turn, dialogue)
    assert dialogue["all but history"] >= turn["all but history"] - 0.01, (turn, dialogue)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert predictions and {"answer", "probs", "gold"} <= set(predictions[0])

    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count("(done before, skipped)") == 6
    assert json.loads((out / "summary.json").read_text()) == summary
