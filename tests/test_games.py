"""The games reader on the real sample games, hand-written v2 files and broken files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from extract.games import UNKNOWN, GameFileError, normalise_box, parse_answer, parse_statuses, read_games
from tests.conftest import sample_path


def v2_record(dialogue_id: int = 7, qids: tuple[int, ...] = (70, 71), answers: tuple = ("Yes", "no")) -> dict:
    return {
        "dialogue_id": dialogue_id,
        "picture_id": 534127,
        "picture": {"file_name": "COCO_val2014_000000534127.jpg", "width": 640, "height": 480},
        "qas": [{"id": q, "q": f"is it number {q}?", "a": a} for q, a in zip(qids, answers, strict=False)],
        "objects": {
            "11": {
                "object_id": 11,
                "category": "cup",
                "category_id": 47,
                "bbox": [10, 20, 30, 40],
                "area": 1,
                "iscrowd": False,
                "segment": [],
            },
            "12": {
                "object_id": 12,
                "category": "dog",
                "category_id": 18,
                "bbox": [0, 0, 5, 5],
                "area": 1,
                "iscrowd": False,
                "segment": [],
            },
        },
        "object_id": 11,
        "status": "success",
    }


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_real_sample_games_read_as_v1() -> None:
    counts = {}
    for split in ("train", "valid", "test"):
        games = read_games(sample_path(split))
        counts[split] = (len(games), sum(len(g.turns) for g in games))
    assert counts == {"train": (6, 40), "valid": (6, 21), "test": (6, 39)}
    game = read_games(sample_path("valid"))[0]
    assert game.game_id == 2424 and game.image == "COCO_train2014_000000270512"
    assert (game.width, game.height) == (640, 480) and game.target_id == 1197044
    assert game.turns[0].question == "Is it in the foreground?" and game.turns[0].answer == 1
    assert game.turns[1].answer == 0 and game.turns[0].qid == 4983
    assert game.target.object_id == 1197044 and game.status == "success"


def test_v2_layout_and_mixed_file(tmp_path: Path) -> None:
    v1 = json.loads(gzip.open(sample_path("valid"), "rt").readline())
    path = write_lines(tmp_path / "mixed.jsonl", [v2_record(), v1])
    games = read_games(path)
    assert [g.game_id for g in games] == [7, v1["id"]]
    assert games[0].image == "COCO_val2014_000000534127" and games[0].target.category_id == 47
    assert [t.answer for t in games[0].turns] == [1, 0]
    assert games[0].target.bbox == (10.0, 20.0, 30.0, 40.0)


def test_status_filter_and_empty_games(tmp_path: Path) -> None:
    failed = {**v2_record(8, (80,), ("Yes",)), "status": "failure"}
    empty = {**v2_record(9, (), ()), "qas": []}
    path = write_lines(tmp_path / "g.jsonl", [v2_record(), failed, empty])
    assert [g.game_id for g in read_games(path)] == [7]
    assert [g.game_id for g in read_games(path, None)] == [7, 8]
    assert [g.game_id for g in read_games(path, parse_statuses("failure"))] == [8]
    with pytest.raises(ValueError, match="--status"):
        parse_statuses("won")


def test_answers_absent_read_as_unknown(tmp_path: Path) -> None:
    record = v2_record()
    for qa in record["qas"]:
        del qa["a"]
    assert [t.answer for t in read_games(write_lines(tmp_path / "new.jsonl", [record]))[0].turns] == [UNKNOWN] * 2


def test_single_game_as_pretty_json_object(tmp_path: Path) -> None:
    path = tmp_path / "game.json"
    path.write_text(json.dumps(v2_record(), indent=2))
    assert read_games(path)[0].game_id == 7


@pytest.mark.parametrize("spelling, label", [("Yes", 1), (" yes ", 1), ("<yes>", 1), ("NO", 0), ("N/A", 2), ("n/a", 2)])
def test_answer_spellings(spelling: str, label: int) -> None:
    assert parse_answer(spelling) == label


def test_box_conversion_is_corners_over_size() -> None:
    # [x, y, w, h] = [100, 50, 200, 100] in a 400x200 image → (0.25, 0.25, 0.75, 0.75), not (…, w/W, h/H)
    assert normalise_box((100, 50, 200, 100), 400, 200) == (0.25, 0.25, 0.75, 0.75)
    assert normalise_box((-10, 150, 500, 100), 400, 200) == (0.0, 0.75, 1.0, 1.0)


@pytest.mark.parametrize(
    "records, message",
    [
        ([v2_record(), "{not json"], r"bad\.jsonl:2: malformed JSON"),
        ([{**v2_record(), "object_id": 99}], r"bad\.jsonl:1: game 7: target object 99 is not among"),
        (
            [v2_record(7, (70,)), v2_record(8, (70,))],
            r"bad\.jsonl:2: game 8: question id 70 already used at line 1",
        ),
        (
            [{k: v for k, v in v2_record().items() if k != "picture"}],
            r"bad\.jsonl:1: game 7: missing required field",
        ),
        ([v2_record(7, (70,), ("maybe",))], r"bad\.jsonl:1: game 7: question 70: unknown answer 'maybe'"),
        (  # a failure game is filtered out later, but its question ids still count
            [v2_record(7, (70,)), {**v2_record(8, (70,)), "status": "failure"}],
            r"bad\.jsonl:2: game 8: question id 70 already used at line 1",
        ),
        ([{**v2_record(), "objects": [v2_record()["objects"]["11"]]}], r"bad\.jsonl:1: game 7: bad value"),
        (
            [{**v2_record(), "picture": {"file_name": "COCO_val2014_000000534127.jpg", "width": 0, "height": 480}}],
            r"bad\.jsonl:1: game 7: image size 0x480",
        ),
        (
            [{**v2_record(), "objects": {"11": {**v2_record()["objects"]["11"], "bbox": [1, "NaN", 3, 4]}}}],
            r"bad\.jsonl:1: game 7: bad value \(object 11: bbox",
        ),
        (
            [{**v2_record(), "qas": [{"id": 70, "q": None, "a": "Yes"}]}],
            r"bad\.jsonl:1: game 7: question 70: the question is None",
        ),
    ],
)
def test_bad_files_name_file_line_and_game(tmp_path: Path, records: list, message: str) -> None:
    with pytest.raises(GameFileError, match=message):
        read_games(write_lines(tmp_path / "bad.jsonl", records))


def test_truncated_gzip_is_one_clear_error(tmp_path: Path) -> None:
    data = sample_path("train").read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GameFileError, match=r"cut\.jsonl\.gz:\d+: cannot read games file"):
        read_games(path)


def test_line_separator_characters_inside_a_question_stay_in_their_line(tmp_path: Path) -> None:
    record = v2_record()
    record["qas"][0]["q"] = "is it the cup\u2028on the left\x85?"
    path = tmp_path / "u2028.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_games(path)[0].turns[0].question == record["qas"][0]["q"]
