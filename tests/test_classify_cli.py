"""`pipeline train` and `pipeline evaluate` end to end through click, and their one-line errors."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_classify_helpers import write_sample_cache

from classify.data import read_split
from pipeline import main
from tests.conftest import sample_path

FAST = ["--epochs", "2", "--hidden", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_lxmert, sample_regions) -> dict[str, Path]:
    """Caches of the real sample games, extracted with the tiny random LXMERT by `pipeline extract`."""
    directory = tmp_path_factory.mktemp("caches")
    caches = {}
    for split in ("train", "valid", "test"):
        out = directory / f"{split}.h5"
        games = sample_path(split)
        result = _invoke("extract", "--games", games, "--regions", sample_regions, "--model", tiny_lxmert,
                         "--out", out, "--device", "cpu")  # fmt: skip
        assert result.exit_code == 0, result.output
        caches[split] = out
    return caches


def _invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _train(caches: dict[str, Path], out: Path, *extra: object):
    return _invoke("train", "--train", caches["train"], "--valid", caches["valid"], "--out", out, *FAST, *extra)


def _one_line_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    return result.output.strip().splitlines()[-1]


def test_train_both_models_and_evaluate_side_by_side(tmp_path, caches):
    for model in ("turn", "dialogue"):
        result = _train(caches, tmp_path / model, "--model", model)
        assert result.exit_code == 0, result.output
        assert "best epoch" in result.output
    run = tmp_path / "dialogue"
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "metrics.csv",
        "best.pt",
        "last.pt",
        "train.log",
    }
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert "epoch 2: train loss" in (run / "train.log").read_text()
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    assert checkpoint["spec"]["answer_feedback"] and checkpoint["feature_size"] == 32  # tiny LXMERT hidden size
    assert json.loads((run / "config.json").read_text())["spec"]["kind"] == "dialogue"

    subset = tmp_path / "subset.txt"
    subset.write_text("\n".join(str(q) for q in h5py.File(caches["test"], "r")["qid"][3:9]) + "\n")
    result = _invoke("evaluate", "--run", tmp_path / "turn", "--run", run, "--cache", caches["test"],
                     "--subset", subset, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    titles = (
        "Overall",
        "Per class",
        "Confusion, turn",
        "Confusion, dialogue own",
        "Accuracy by turn",
        "Accuracy by previous gold answer",
        "Accuracy after an earlier Yes",
        "Accuracy by question type",
    )
    for title in (*titles, "Subset", "(6 questions)"):
        assert title in result.output
    header = result.output[result.output.index("Overall") :].splitlines()[1]
    assert header.split() == [
        "turn",
        "dialogue",
        "own",
        "dialogue",
        "gold",
    ]  # own answers fed back, gold history
    report = json.loads((tmp_path / "turn" / "report.json").read_text())
    assert set(report["columns"]) == {"turn", "dialogue own", "dialogue gold"}
    assert report["questions"] == 39 and report["subset"]["questions"] == 6
    assert report["game_statuses"] == "success" and "(games: success)" in result.output
    assert report["columns"]["dialogue own"]["subset"]["questions"] == 6


def test_seed_preset_trains_the_prior_configuration(tmp_path):
    caches = {split: write_sample_cache(tmp_path / f"{split}.h5", split) for split in ("train", "valid")}
    result = _train(caches, tmp_path / "seed", "--preset", "seed")
    assert result.exit_code == 0, result.output
    spec = torch.load(tmp_path / "seed" / "best.pt", weights_only=True)["spec"]
    prior = {
        "kind": "dialogue",
        "hidden": 200,
        "layers": 1,
        "target_vision": False,
        "answer_feedback": False,
        "target": False,
        "skip": False,
    }  # fmt: skip  (pooled only → LSTM 200 → one Linear layer)
    assert {k: spec[k] for k in prior} == prior


def test_predictions_scored_against_a_games_file(tmp_path):
    from extract.games import read_games

    games_file = sample_path("test")
    games = read_games(games_file)
    turns = [turn for game in games for turn in game.turns]
    with open(tmp_path / "predictions.csv", "w") as handle:  # right except the first question
        handle.write("qid,answer\n" + "".join(f"{t.qid},{'<yes>' if t.answer == 0 else 'No'}\n" for t in turns[:1]))
        handle.write("".join(f"{t.qid},{['No', 'yes', 'N/A'][t.answer]}\n" for t in turns[1:]))
    result = _invoke("evaluate", "--predictions", tmp_path / "predictions.csv", "--games", games_file)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "predictions.csv.report.json").read_text())
    scores = report["columns"]["predictions.csv"]["all"]
    assert scores["questions"] == len(turns) == 39
    assert scores["accuracy"] == pytest.approx(38 / 39)
    assert scores["by_turn"]["1"]["accuracy"] == pytest.approx(5 / 6)


def test_existing_run_dir_is_a_one_line_error(tmp_path):
    caches = {split: write_sample_cache(tmp_path / f"{split}.h5", split) for split in ("train", "valid")}
    assert _train(caches, tmp_path / "run", "--epochs", "1").exit_code == 0
    line = _one_line_error(_train(caches, tmp_path / "run"))
    assert line.startswith("Error: --out") and "--overwrite" in line
    assert _train(caches, tmp_path / "run", "--epochs", "1", "--overwrite").exit_code == 0


def test_bad_caches_are_one_line_errors(tmp_path):
    caches = {split: write_sample_cache(tmp_path / f"{split}.h5", split) for split in ("train", "valid")}
    with h5py.File(caches["train"], "r+") as h5:
        h5["pooled"][4] = np.inf
        qid = int(h5["qid"][4])
    line = _one_line_error(_train(caches, tmp_path / "nan"))
    assert "NaN/inf" in line and str(qid) in line and str(caches["train"]) in line
    assert not (tmp_path / "nan").exists()  # nothing half-written

    old = write_sample_cache(tmp_path / "old.h5", "valid", schema_version=0)
    line = _one_line_error(_train({"train": old, "valid": caches["valid"]}, tmp_path / "old"))
    assert "schema version 0" in line

    caches["train"] = write_sample_cache(tmp_path / "train.h5", "train")
    assert _train(caches, tmp_path / "run", "--epochs", "1").exit_code == 0
    wide = write_sample_cache(tmp_path / "wide.h5", "test", features=24)
    line = _one_line_error(_invoke("evaluate", "--run", tmp_path / "run", "--cache", wide, "--device", "cpu"))
    assert "24-d features" in line and "16-d" in line


def test_evaluate_refuses_what_it_cannot_score(tmp_path):
    caches = {split: write_sample_cache(tmp_path / f"{split}.h5", split) for split in ("train", "valid", "test")}
    assert _train(caches, tmp_path / "run", "--epochs", "1").exit_code == 0
    checkpoint = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    torch.save({**checkpoint, "schema_version": 0}, tmp_path / "old.pt")
    line = _one_line_error(_invoke("evaluate", "--run", tmp_path / "old.pt", "--cache", caches["test"]))
    assert "trained on cache schema 0" in line and "retrain it" in line
    line = _one_line_error(_invoke("evaluate", "--run", tmp_path / "run", "--cache", caches["test"], "--out", tmp_path))
    assert "is a directory" in line and not list(tmp_path.glob("*.tmp"))

    qids = read_split(caches["test"]).qid.tolist()
    (tmp_path / "p.csv").write_text("qid,answer\n" + "".join(f"{q},yes\n" for q in [*qids, qids[3]]))
    line = _one_line_error(_invoke("evaluate", "--predictions", tmp_path / "p.csv", "--cache", caches["test"]))
    assert f"a second prediction for qid {qids[3]}" in line and "p.csv:" in line
    (tmp_path / "p.csv").write_text("qid,answer\n" + "".join(f"{q},<Yes>\n" for q in qids))
    scored = _invoke("evaluate", "--predictions", tmp_path / "p.csv", "--cache", caches["test"])
    assert scored.exit_code == 0, scored.output
    gold = read_split(caches["test"]).answer
    report = json.loads((tmp_path / "p.csv.report.json").read_text())
    assert report["columns"]["p.csv"]["all"]["accuracy"] == pytest.approx(float((gold == 1).mean()))

    unanswered = write_sample_cache(tmp_path / "unanswered.h5", "valid")
    with h5py.File(unanswered, "r+") as h5:
        h5["answer"][:] = -1
    line = _one_line_error(_train({"train": caches["train"], "valid": unanswered}, tmp_path / "blind"))
    assert "no question has a gold answer" in line and not (tmp_path / "blind").exists()
    line = _one_line_error(_invoke("evaluate", "--predictions", tmp_path / "p.csv", "--cache", unanswered))
    assert "no question with a gold answer to score" in line


def test_same_seed_gives_identical_metrics(tmp_path):
    caches = {split: write_sample_cache(tmp_path / f"{split}.h5", split) for split in ("train", "valid")}
    metrics = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert _train(caches, tmp_path / name, "--seed", seed, "--epochs", "3", "--patience", "3").exit_code == 0
        rows = list(csv.DictReader((tmp_path / name / "metrics.csv").open()))
        metrics[name] = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert len(metrics["a"]) == 3
    assert metrics["a"] == metrics["b"]
    assert metrics["a"] != metrics["c"]
    weights = [torch.load(tmp_path / name / "last.pt", weights_only=True)["state_dict"] for name in "ab"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_dialogue_model_built_on_a_frozen_turn_run(tmp_path):
    caches = {split: write_sample_cache(tmp_path / f"{split}.h5", split) for split in ("train", "valid")}
    assert _train(caches, tmp_path / "turn", "--model", "turn").exit_code == 0
    result = _train(caches, tmp_path / "dialogue", "--base", tmp_path / "turn", "--epochs", "3")
    assert result.exit_code == 0, result.output
    base = torch.load(tmp_path / "turn" / "best.pt", weights_only=True)["state_dict"]
    last = torch.load(tmp_path / "dialogue" / "last.pt", weights_only=True)["state_dict"]
    for name, value in base.items():  # the baseline's MLP, embedding and input statistics, unchanged
        assert torch.equal(last[name.replace("mlp.", "turn.")], value), name
    rows = list(csv.DictReader((tmp_path / "dialogue" / "metrics.csv").open()))
    assert len({row["valid_loss"] for row in rows}) == 3  # while the LSTM trains

    line = _one_line_error(_train(caches, tmp_path / "wide", "--base", tmp_path / "turn", "--hidden", "8"))
    assert "--base" in line and "hidden 16 vs 8" in line and not (tmp_path / "wide").exists()
    line = _one_line_error(_train(caches, tmp_path / "t2", "--base", tmp_path / "turn", "--model", "turn"))
    assert "--base is for the dialogue model" in line


def test_stopped_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    caches = {split: write_sample_cache(tmp_path / f"{split}.h5", split) for split in ("train", "valid")}
    common = ["--epochs", "4", "--patience", "10", "--batch-size", "2"]  # several batches: shuffling matters
    assert _train(caches, tmp_path / "full", *common).exit_code == 0

    train_module = importlib.import_module("classify.train")  # `classify.train` is also the package's function
    real_epoch = train_module.train_epoch

    def dies_in_epoch_3(*args, **kwargs):
        if args[-1] == 3:  # the epoch number
            raise RuntimeError("killed")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", dies_in_epoch_3)
    stopped = _train(caches, tmp_path / "stopped", *common)
    assert isinstance(stopped.exception, RuntimeError)
    monkeypatch.undo()
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["epoch"] == 2

    line = _one_line_error(_train(caches, tmp_path / "stopped", *common, "--lr", "0.1", "--resume"))
    assert "other --lr" in line
    line = _one_line_error(_train(caches, tmp_path / "nothing", *common, "--resume"))
    assert "no run to resume" in line
    (tmp_path / "stopped").rename(tmp_path / "moved")  # a run may be moved before it is resumed
    resumed = _train(caches, tmp_path / "moved", *common, "--resume")
    assert resumed.exit_code == 0, resumed.output

    def metrics(run):
        return [
            {k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((run / "metrics.csv").open())
        ]

    assert len(metrics(tmp_path / "full")) == 4 and metrics(tmp_path / "moved") == metrics(tmp_path / "full")
    for which in ("last.pt", "best.pt"):
        a, b = (torch.load(tmp_path / run / which, weights_only=True) for run in ("full", "moved"))
        assert a["epoch"] == b["epoch"] and all(
            torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]
        )
