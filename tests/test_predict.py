"""`pipeline predict` on the real sample games: batch, single game, stdin and the live mode."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from classify.data import read_split
from classify.predict import LiveDialogue, predict_split
from classify.run import load_model
from extract.games import read_games
from pipeline import main
from tests.conftest import sample_path, save_tiny_lxmert, write_region_store


def sample_questions() -> list[str]:
    return [t.question for split in ("train", "valid", "test") for g in read_games(sample_path(split)) for t in g.turns]


def invoke(*args: object, input: str | None = None) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_lxmert: Path, sample_regions: Path) -> dict[str, Path]:
    """Caches of the sample splits extracted with the tiny LXMERT, and a dialogue run trained on them."""
    root = tmp_path_factory.mktemp("predict")
    paths = {"oracle": tiny_lxmert, "regions": sample_regions, "run": root / "run"}
    for split in ("train", "valid", "test"):
        paths[split] = root / f"{split}.h5"
        args = ["extract", "--games", sample_path(split), "--regions", sample_regions, "--model", tiny_lxmert]
        assert invoke(*args, "--out", paths[split], "--device", "cpu").exit_code == 0
    result = invoke("train", "--train", paths["train"], "--valid", paths["valid"], "--out", paths["run"],
                    "--epochs", "3", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    return paths


def predict_args(trained: dict[str, Path], *extra: object) -> list:
    return ["predict", "--oracle", trained["oracle"], "--run", trained["run"], "--regions", trained["regions"],
            "--device", "cpu", *extra]  # fmt: skip


def test_predict_matches_answering_the_extracted_cache(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "predictions.jsonl"
    result = invoke(*predict_args(trained, "--games", sample_path("test"), "--out", out, "--cache", tmp_path / "c.h5"))
    assert result.exit_code == 0, result.output
    assert "6 games, 39 questions answered; accuracy" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 39 and set(records[0]) == {"game_id", "qid", "turn", "question", "answer", "probs", "gold"}
    assert records[0]["game_id"] == 2501 and records[0]["turn"] == 0 and records[1]["turn"] == 1
    assert all(r["answer"] in ("No", "Yes", "N/A") and r["gold"] in ("No", "Yes") for r in records)
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-4 for r in records)
    # the same numbers through the cache path: `pipeline extract` + the run's model on its own answers
    model, _ = load_model(trained["run"])
    probs = predict_split(model, read_split(trained["test"]), 8, "cpu")
    ours = np.array([[r["probs"][k] for k in ("No", "Yes", "N/A")] for r in records])
    np.testing.assert_allclose(ours, probs, atol=5e-3)  # the cache stores fp16, predict keeps fp32
    assert read_split(tmp_path / "c.h5").qid.tolist() == [r["qid"] for r in records]


def test_single_game_object_and_stdin_without_answers(trained: dict[str, Path], tmp_path: Path) -> None:
    game = json.loads(gzip.open(sample_path("valid"), "rt").readline())
    for qa in game["qas"]:
        del qa["answer"]
    (tmp_path / "game.json").write_text(json.dumps(game, indent=2))
    out = tmp_path / "one.jsonl"
    assert invoke(*predict_args(trained, "--games", tmp_path / "game.json", "--out", out)).exit_code == 0
    from_file = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(from_file) == len(game["qas"]) and "gold" not in from_file[0]
    result = invoke(*predict_args(trained, "--games", "-", "--out", "-"), input=json.dumps(game) + "\n")
    assert result.exit_code == 0, result.output
    from_stdin = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert from_stdin == from_file


def test_live_mode_answers_like_batch_mode(trained: dict[str, Path], tmp_path: Path) -> None:
    game = json.loads(gzip.open(sample_path("test"), "rt").readline())
    questions = [qa["question"] for qa in game["qas"]][:4]
    game["qas"] = []
    (tmp_path / "empty.json").write_text(json.dumps(game))
    live = invoke(*predict_args(trained, "--interactive", "--game", tmp_path / "empty.json"),
                  input="\n".join(questions) + "\nquit\n")  # fmt: skip
    assert live.exit_code == 0, live.output
    answers = [line.split("\t")[0] for line in live.stdout.splitlines() if "\t(" in line]
    game["qas"] = [{"id": i + 1, "question": q} for i, q in enumerate(questions)]
    (tmp_path / "asked.json").write_text(json.dumps(game))
    out = tmp_path / "asked.jsonl"
    assert invoke(*predict_args(trained, "--games", tmp_path / "asked.json", "--out", out)).exit_code == 0
    batch = [json.loads(line) for line in out.read_text().splitlines()]
    assert answers == [r["answer"] for r in batch] and len(answers) == 4
    for line, record in zip([x for x in live.stdout.splitlines() if "\t(" in x], batch, strict=True):
        assert f"Yes {record['probs']['Yes']:.2f}" in line


def test_live_dialogue_carries_the_state_like_batch_mode(trained: dict[str, Path]) -> None:
    split = read_split(trained["test"])
    model, _ = load_model(trained["run"])
    first = slice(split.starts[0], split.starts[1])  # the first game's rows
    live = LiveDialogue(model, 0, int(split.target_category[0]), split.target_box[0], "cpu")
    asked = np.stack([live.ask(p, v) for p, v in zip(split.pooled[first], split.target_vision[first], strict=True)])
    np.testing.assert_allclose(asked, predict_split(model, split, 8, "cpu")[first], atol=1e-5)
    fresh = LiveDialogue(model, 0, int(split.target_category[0]), split.target_box[0], "cpu")
    last = fresh.ask(split.pooled[first][-1], split.target_vision[first][-1])
    assert not np.allclose(last, asked[-1], atol=1e-4)  # the same question without the dialogue is answered otherwise


def test_mismatched_oracle_and_bad_games_leave_nothing(trained: dict[str, Path], tmp_path: Path) -> None:
    other = save_tiny_lxmert(tmp_path / "other", ["is", "it"], feature_size=16)
    out = tmp_path / "p.jsonl"
    args = predict_args(trained, "--games", sample_path("test"), "--out", out)
    args[args.index("--oracle") + 1] = other
    result = invoke(*args)
    assert result.exit_code != 0 and "differs from that of the caches" in result.output and not out.exists()
    retrained = save_tiny_lxmert(tmp_path / "retrained", sample_questions(), seed=1)
    args[args.index("--oracle") + 1] = retrained  # same architecture and vocabulary, other weights
    result = invoke(*args)
    assert result.exit_code != 0 and "model_weights_hash differs" in result.output and not out.exists()
    args[args.index("--oracle") + 1] = shutil.copytree(trained["oracle"], tmp_path / "moved" / "oracle")
    assert invoke(*args).exit_code == 0 and out.exists()  # the same oracle at another path is the same oracle
    out.unlink()
    narrow = write_region_store(tmp_path / "narrow.h5", read_games(sample_path("test")), feature_size=8)
    result = invoke(*predict_args(trained, "--games", sample_path("test"), "--out", out, "--regions", narrow))
    assert result.exit_code != 0 and "features have size 8 but" in result.output and not out.exists()
    game = json.loads(gzip.open(sample_path("test"), "rt").readline())
    game["object_id"] = 1
    (tmp_path / "no_target.json").write_text(json.dumps(game))
    result = invoke(*predict_args(trained, "--games", tmp_path / "no_target.json", "--out", out))
    assert result.exit_code != 0 and "target object 1 is not among" in result.output and not out.exists()
    game = json.loads(gzip.open(sample_path("test"), "rt").readline())
    game["image"]["file_name"] = "COCO_val2014_000000999999.jpg"
    (tmp_path / "no_image.json").write_text(json.dumps(game))
    result = invoke(*predict_args(trained, "--games", tmp_path / "no_image.json", "--out", out))
    assert result.exit_code != 0 and "no regions for image COCO_val2014_000000999999" in result.output
    assert not out.exists()
