"""`pipeline extract` end to end: the real sample games, a tiny LXMERT directory, synthetic regions."""

from __future__ import annotations

import gzip
import json
import re
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
from extract.encoder import Encoder, Example, inject_target
from extract.games import read_games
from extract.job import chunk_games
from extract.regions import RegionStore
from pipeline import main
from tests.conftest import FEATURE_SIZE, REPO, sample_path, torchrun_pipeline


def run_cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def extract_args(games: Path, regions: Path, model: Path, out: Path) -> list:
    return [
        "extract",
        "--games",
        games,
        "--regions",
        regions,
        "--model",
        model,
        "--out",
        out,
        "--device",
        "cpu",
    ]


def test_extract_writes_the_cache_schema(tmp_path: Path, tiny_lxmert: Path, sample_regions: Path) -> None:
    games_path = sample_path("test")
    out = tmp_path / "cache" / "test.h5"
    result = run_cli(*extract_args(games_path, sample_regions, tiny_lxmert, out), "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert "6 games, 39 questions" in result.output
    rows = read_rows(out)
    games = read_games(games_path)
    assert rows.qid.tolist() == [t.qid for g in games for t in g.turns]
    assert rows.turn.tolist() == [i for g in games for i in range(len(g.turns))]
    assert rows.game_id.tolist() == [g.game_id for g in games for _ in g.turns]
    assert rows.answer.tolist() == [t.answer for g in games for t in g.turns]
    assert rows.question[0] == games[0].turns[0].question and rows.image[0] == games[0].image
    assert rows.pooled.dtype == np.float16 and rows.pooled.shape == (39, 32) == rows.target_vision.shape
    np.testing.assert_allclose(rows.target_box[0], games[0].target_box_normalised(), atol=1e-6)
    assert rows.target_category[0] == games[0].target.category_id
    assert rows.attrs["schema_version"] == 1 and list(rows.attrs["answer_labels"]) == ["No", "Yes", "N/A"]
    assert rows.attrs["model"] == str(tiny_lxmert) and rows.attrs["target_mode"] == "nearest"
    assert rows.attrs["status_filter"] == "success" and len(rows.attrs["model_config_hash"]) == 16
    # the vectors are the encoder's own, computed in memory
    encoder, store = Encoder.load(str(tiny_lxmert)), RegionStore(sample_regions)
    examples = [Example(t.question, inject_target(games[0], store[games[0].image])) for t in games[0].turns]
    pooled, vision = encoder.encode(examples)
    np.testing.assert_allclose(rows.pooled[: len(examples)], pooled, atol=2e-3)
    np.testing.assert_allclose(rows.target_vision[: len(examples)], vision, atol=2e-3)
    assert not list(out.parent.glob("*.parts")) and not list(out.parent.glob("*.tmp"))


def test_existing_output_and_missing_images(tmp_path: Path, tiny_lxmert: Path, sample_regions: Path) -> None:
    out = tmp_path / "c.h5"
    args = extract_args(sample_path("test"), sample_regions, tiny_lxmert, out)
    assert run_cli(*args).exit_code == 0
    again = run_cli(*args)
    assert again.exit_code != 0 and "output exists; pass --overwrite" in again.output
    assert run_cli(*args, "--overwrite").exit_code == 0

    partial = tmp_path / "partial.h5"
    dropped = read_games(sample_path("test"))[0].image
    with h5py.File(sample_regions) as src, h5py.File(partial, "w") as dst:
        for stem in src:
            if stem != dropped:
                src.copy(src[stem], dst, stem)
    result = run_cli(*extract_args(sample_path("test"), partial, tiny_lxmert, tmp_path / "m.h5"))
    assert result.exit_code != 0 and "no regions for image" in result.output and "--skip-missing" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output and not (tmp_path / "m.h5").exists()
    result = run_cli(*extract_args(sample_path("test"), partial, tiny_lxmert, tmp_path / "m.h5"), "--skip-missing")
    assert result.exit_code == 0
    assert "m.h5: 5 games" in result.output and "1 games skipped (image missing)" in result.output


def test_bad_games_file_is_one_line(tmp_path: Path, tiny_lxmert: Path, sample_regions: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1,\n')
    result = run_cli(*extract_args(bad, sample_regions, tiny_lxmert, tmp_path / "o.h5"))
    assert result.exit_code == 1 and "Error: " in result.output and "bad.jsonl:1: malformed JSON" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.h5").exists()


def test_inputs_checked_before_any_work(tmp_path: Path, tiny_lxmert: Path, sample_regions: Path) -> None:
    games = read_games(sample_path("test"))
    targets = tmp_path / "targets.h5"
    with h5py.File(targets, "w") as h5:  # every target but the last game's
        for game in games[:-1]:
            h5[str(game.target_id)] = np.zeros(FEATURE_SIZE, dtype=np.float32)
    args = extract_args(sample_path("test"), sample_regions, tiny_lxmert, tmp_path / "o.h5")
    cases = [
        ([*args, "--target-features", targets], f"game {games[-1].game_id}: target object {games[-1].target_id}"),
        ([*args, "--device", "tpu"], "--device tpu: use auto, cpu, cuda or cuda:N"),
        ([*args, "--model", tmp_path / "no_such_oracle"], "no_such_oracle: no such LXMERT directory"),
        ([*args[:-3], tmp_path, "--device", "cpu"], "is a directory; give a file name"),
        ([*args[:4], tiny_lxmert / "vocab.txt", *args[5:]], "vocab.txt: cannot open as HDF5"),
    ]
    for command, message in cases:
        result = run_cli(*command)
        assert result.exit_code != 0 and message in result.output, (command, result.output)
        errors = [line for line in result.output.splitlines() if "Error" in line]
        assert "Traceback" not in result.output and len(errors) == 1, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["targets.h5"]  # nothing half-written


def test_resume_refuses_a_run_with_other_settings(
    tmp_path: Path, tiny_lxmert: Path, sample_regions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    games = read_games(sample_path("test"))
    targets = tmp_path / "targets.h5"
    with h5py.File(targets, "w") as h5:
        for game in games:
            h5[str(game.target_id)] = np.ones(FEATURE_SIZE, dtype=np.float32)
    out = tmp_path / "o.h5"
    args = [*extract_args(sample_path("test"), sample_regions, tiny_lxmert, out), "--chunk-size", "10"]

    def crash(*_: object) -> None:
        raise RuntimeError("killed before the merge")

    monkeypatch.setattr("extract.job._merge", crash)  # every chunk is saved, then the job dies
    with pytest.raises(RuntimeError):
        run_cli(*args, "--target-features", targets)
    monkeypatch.undo()
    refused = run_cli(*args, "--resume")  # same games and model, but nearest-region targets this time
    assert refused.exit_code != 0 and "the partial run had other target_features, target_mode" in refused.output
    resumed = run_cli(*args, "--target-features", targets, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert read_rows(out).attrs["target_mode"] == "file"


def copies_of_sample(path: Path, copies: int) -> Path:
    """The 18 real sample games repeated with fresh game and question ids: enough rows to kill a run part way."""
    lines = []
    for split in ("train", "valid", "test"):
        lines += gzip.open(sample_path(split), "rt").read().splitlines()
    with open(path, "w") as handle:
        for copy in range(copies):
            for line in lines:
                game = json.loads(line)
                game["id"] += copy * 100_000
                for qa in game["qas"]:
                    qa["id"] += copy * 10_000_000
                handle.write(json.dumps(game) + "\n")
    return path


def test_killed_run_resumes_to_the_same_file(tmp_path: Path, tiny_lxmert: Path, sample_regions: Path) -> None:
    games = copies_of_sample(tmp_path / "games.jsonl", 6)  # 600 questions
    killed, full = tmp_path / "killed.h5", tmp_path / "full.h5"
    common = ["--chunk-size", "40", "--batch-size", "8"]
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "-v",
        *map(str, extract_args(games, sample_regions, tiny_lxmert, killed)),
    ]
    process = subprocess.Popen(command + common, cwd=REPO, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "saved chunk 2" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    parts = tmp_path / "killed.h5.parts"
    done = sorted(p.name for p in parts.glob("chunk_*.npz"))
    assert 3 <= len(done) < 15 and not killed.exists()
    refused = run_cli(*extract_args(games, sample_regions, tiny_lxmert, killed), *common)
    assert refused.exit_code != 0 and "--resume" in refused.output
    resumed = run_cli("-v", *extract_args(games, sample_regions, tiny_lxmert, killed), *common, "--resume")
    assert resumed.exit_code == 0, resumed.output
    recomputed = {f"chunk_{int(n):05d}.npz" for n in re.findall(r"saved chunk (\d+)", resumed.output)}
    assert recomputed and not recomputed & set(done)  # finished chunks are read back, not encoded again
    assert len(recomputed) + len(done) == len(chunk_games(read_games(games), 40))
    assert run_cli(*extract_args(games, sample_regions, tiny_lxmert, full), *common).exit_code == 0
    a, b = read_rows(killed), read_rows(full)
    assert a.qid.tolist() == b.qid.tolist() and len(a.qid) == 600
    np.testing.assert_allclose(a.pooled.astype(np.float32), b.pooled.astype(np.float32), atol=1e-5)
    np.testing.assert_allclose(a.target_vision.astype(np.float32), b.target_vision.astype(np.float32), atol=1e-5)
    assert not parts.exists()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one(tmp_path: Path, tiny_lxmert: Path, sample_regions: Path) -> None:
    games = sample_path("train")
    single, sharded = tmp_path / "single.h5", tmp_path / "sharded.h5"
    common = ["--chunk-size", "7", "--batch-size", "4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: the same summation order, so fp16 rounds the same way
    try:
        assert run_cli(*extract_args(games, sample_regions, tiny_lxmert, single), *common).exit_code == 0
    finally:
        torch.set_num_threads(threads)
    log = torchrun_pipeline("-v", *extract_args(games, sample_regions, tiny_lxmert, sharded), *common)
    saved = sorted(int(n) for n in re.findall(r"saved chunk (\d+)", log))  # both ranks log to this stderr
    assert saved == list(range(len(chunk_games(read_games(games), 7))))  # each chunk encoded once: disjoint shards
    a, b = read_rows(single), read_rows(sharded)
    assert a.qid.tolist() == b.qid.tolist() and a.question == b.question
    np.testing.assert_allclose(a.pooled.astype(np.float32), b.pooled.astype(np.float32), atol=1e-5)
    np.testing.assert_allclose(a.target_vision.astype(np.float32), b.target_vision.astype(np.float32), atol=1e-5)
