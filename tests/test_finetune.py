"""`pipeline finetune` on games whose answer is a simple function of the target region's features."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.cache import read_rows
from extract.encoder import Encoder, Example, OracleSettings, collate, inject_target, load_lxmert
from extract.finetune import SingleTurnOracle
from extract.games import read_games
from extract.regions import RegionStore, write_image
from pipeline import main
from tests.conftest import REPO, save_tiny_lxmert, torchrun_pipeline

QUESTIONS = ("is it bright ?", "is it the bright one ?")


def feature_world(directory: Path, games_per_split: int = 40, seed: int = 0) -> dict[str, Path]:
    """Images of 4 regions; the target is one of them; the answer is Yes iff its features' first value > 0."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"regions": directory / "regions.h5"}
    game_id = qid = 0
    with h5py.File(paths["regions"], "w") as h5:
        for split in ("train", "valid"):
            lines = []
            for _ in range(games_per_split):
                game_id += 1
                stem = f"COCO_train2014_{game_id:012d}"
                boxes = np.array([[i * 150, 100, i * 150 + 120, 300] for i in range(4)], dtype=np.float32)
                features = rng.normal(size=(4, 16)).astype(np.float32)
                features[:, 0] = rng.choice([-2.0, 2.0], size=4)
                write_image(h5, stem, features, boxes, 480, 640)
                target = int(rng.integers(0, 3))  # never the last slot, which the target overwrites
                objects = [
                    {
                        "id": i + 1,
                        "category": "cup",
                        "category_id": 47,
                        "area": 1.0,
                        "segment": [],
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                    }
                    for i, b in enumerate(boxes)
                ]
                answer = "Yes" if features[target, 0] > 0 else "No"
                qas = []
                for question in QUESTIONS:
                    qid += 1
                    qas.append({"id": qid, "question": question, "answer": answer})
                lines.append(
                    json.dumps(
                        {
                            "id": game_id,
                            "image": {"file_name": stem + ".jpg", "width": 640, "height": 480},
                            "qas": qas,
                            "objects": objects,
                            "object_id": target + 1,
                            "status": "success",
                        }
                    )
                )
            paths[split] = directory / f"{split}.jsonl"
            paths[split].write_text("\n".join(lines) + "\n")
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("feature_world")
    paths = feature_world(directory)
    paths["base"] = save_tiny_lxmert(directory / "base", list(QUESTIONS))
    return paths


def finetune_args(world: dict[str, Path], out: Path, *extra: object) -> list[str]:
    args = [
        "finetune",
        "--train",
        world["train"],
        "--valid",
        world["valid"],
        "--regions",
        world["regions"],
        "--model",
        world["base"],
        "--out",
        out,
        "--device",
        "cpu",
        "--lr",
        "3e-3",
        "--batch-size",
        "8",
        "--warmup",
        "0.1",
        "--seed",
        "1",
        *extra,
    ]
    return [str(a) for a in args]


def test_finetune_learns_and_round_trips_through_extract(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "oracle"
    result = CliRunner().invoke(main, finetune_args(world, out, "--epochs", "6"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = (out / "finetune_metrics.csv").read_text().splitlines()
    assert len(metrics) == 7
    best = max(float(line.split(",")[3]) for line in metrics[1:])
    assert best >= 0.8, metrics  # chance is ~0.5: answers are Yes/No by a coin flip on the target's features
    settings = OracleSettings.read(out)
    assert (settings.head, settings.marker, settings.max_length) == ("mlp", "offset", 32)
    assert not (out / "checkpoint.pt").exists()

    again = CliRunner().invoke(
        main,
        [
            "finetune",
            "--eval-only",
            "--model",
            str(out),
            "--valid",
            str(world["valid"]),
            "--regions",
            str(world["regions"]),
            "--device",
            "cpu",
        ],
    )
    assert again.exit_code == 0 and f"accuracy {best:.4f}" in again.output, again.output

    cache = tmp_path / "valid.h5"
    args = [
        "extract",
        "--games",
        world["valid"],
        "--regions",
        world["regions"],
        "--model",
        out,
        "--out",
        cache,
    ]
    assert CliRunner().invoke(main, [str(a) for a in args]).exit_code == 0
    rows = read_rows(cache)
    assert rows.attrs["model"] == str(out) and json.loads(rows.attrs["oracle_settings"])["marker"] == "offset"
    encoder = Encoder.load(str(out))
    assert encoder.marker is not None and float(encoder.marker.abs().sum()) > 0
    game = read_games(world["valid"])[0]
    examples = [Example(t.question, inject_target(game, RegionStore(world["regions"])[game.image])) for t in game.turns]
    pooled, vision = encoder.encode(examples)
    np.testing.assert_allclose(rows.pooled[: len(game.turns)], pooled, atol=2e-3)
    np.testing.assert_allclose(rows.target_vision[: len(game.turns)], vision, atol=2e-3)
    # the oracle as fine-tuning ran it (marker and all) gives the same logits from its pooled output as the
    # saved head gives from the cached vectors: training and extraction see the same inputs
    lxmert, tokenizer, settings, extras = load_lxmert(str(out))
    oracle = SingleTurnOracle(lxmert, settings.head, settings.marker).eval()
    oracle.load_extras(extras)
    with torch.no_grad():
        trained = oracle(collate(examples, tokenizer, settings.max_length))
        cached = oracle.head(torch.from_numpy(rows.pooled[: len(game.turns)].astype(np.float32)))
    torch.testing.assert_close(cached, trained, atol=1e-2, rtol=0)


def test_killed_finetune_resumes_to_the_same_weights(world: dict[str, Path], tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    common = ["--epochs", "2", "--save-every", "2"]
    assert CliRunner().invoke(main, finetune_args(world, full, *common)).exit_code == 0
    command = [sys.executable, "-m", "pipeline", "-v", *finetune_args(world, killed, *common)]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "saved checkpoint epoch 0 batch 4" in line:  # mid-epoch, between optimizer steps 2 and 3
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL and (killed / "checkpoint.pt").exists()
    refused = CliRunner().invoke(main, finetune_args(world, killed, *common))
    assert refused.exit_code != 0 and "--resume" in refused.output
    changed = CliRunner().invoke(main, finetune_args(world, killed, "--epochs", "3", "--save-every", "2", "--resume"))
    assert changed.exit_code != 0 and "the killed run used other epochs" in changed.output, changed.output
    resumed = CliRunner().invoke(main, finetune_args(world, killed, *common, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    a, b = Encoder.load(str(full)), Encoder.load(str(killed))
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=False):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(a.marker, b.marker)
    assert (full / "finetune_metrics.csv").read_text() == (killed / "finetune_metrics.csv").read_text()


def test_linear_head_without_marker_and_accumulation(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "plain"
    args = finetune_args(world, out, "--epochs", "1", "--head", "linear", "--marker", "none", "--accumulate", "3")
    result = CliRunner().invoke(main, [*args, "--max-length", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    settings = OracleSettings.read(out)
    assert (settings.head, settings.marker, settings.max_length) == ("linear", "none", 4)
    assert Encoder.load(str(out)).marker is None
    _, _, _, extras = load_lxmert(str(out))
    assert set(extras) == {"head.weight", "head.bias"}
    best = float((out / "finetune_metrics.csv").read_text().splitlines()[1].split(",")[3])
    lengths = []  # the max length every batch is tokenised with: the real collate, watched
    monkeypatch.setattr("extract.finetune.collate", lambda e, t, n: lengths.append(n) or collate(e, t, n))
    evaluate = ["finetune", "--eval-only", "--model", out, "--valid", world["valid"], "--regions", world["regions"]]
    again = CliRunner().invoke(main, [str(a) for a in evaluate])
    assert again.exit_code == 0 and f"accuracy {best:.4f}" in again.output, again.output
    assert set(lengths) == {4}  # the oracle's own setting, not --max-length's default of 32


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_and_save(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun_pipeline(*finetune_args(world, out, "--epochs", "2"))
    lines = (out / "finetune_metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and float(lines[2].split(",")[1]) < float(lines[1].split(",")[1])  # loss goes down
    assert Encoder.load(str(out)).marker is not None
