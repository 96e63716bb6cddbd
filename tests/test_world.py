"""The synthetic world: answer rules on a hand-built scene, the questioner policy, determinism, the files."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from classify.questions import question_type as keyword_type
from extract.games import read_games
from extract.regions import RegionStore
from extract.world import (
    ALL_QUESTIONS,
    CATEGORIES,
    NA,
    NO,
    SIDES,
    YES,
    Question,
    Thing,
    WorldConfig,
    _history_ready,
    answer,
    build_world,
    generate_world,
    question_type,
    side_answer,
)

V1_GAME_KEYS = {"id", "image", "qas", "objects", "object_id", "status", "questioner_id", "timestamp"}
SMALL = WorldConfig(seed=3, train_games=40, valid_games=10, test_games=10, feature_size=16)
W, H = 640, 480
RED_CUP = Thing(1, "cup", "red", (10.0, 10.0, 100.0, 80.0))  # top left
BLUE_CUP = Thing(2, "cup", "blue", (500.0, 380.0, 100.0, 80.0))  # bottom right
RED_DOG = Thing(3, "dog", "red", (280.0, 300.0, 80.0, 60.0))  # x-middle cuts its central half; bottom
LEANING = Thing(4, "apple", "green", (300.0, 10.0, 100.0, 50.0))  # crosses x-middle, but mostly right; top
LEFT, RIGHT, TOP = Question("location", "left"), Question("location", "right"), Question("location", "top")
OTHER_SIDE = Question("history")


@pytest.fixture(scope="module")
def world() -> dict:
    return build_world(WorldConfig(seed=0))  # the default size: the statistics below are about it


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL)


def turns_of(world: dict) -> list[tuple]:
    return [(d, i, q, a) for games in world.values() for d in games for i, (q, a) in enumerate(d.turns)]


# ---------------------------------------------------------------- answer rules on a hand-built scene


def test_category_and_colour_answers() -> None:
    assert answer(Question("object", "cup"), RED_CUP, [], W, H) == YES
    assert answer(Question("object", "dog"), RED_CUP, [], W, H) == NO
    assert answer(Question("color", "red"), RED_DOG, [], W, H) == YES
    assert answer(Question("color", "red"), BLUE_CUP, [], W, H) == NO


@pytest.mark.parametrize(
    ("thing", "expected"),
    [
        (RED_CUP, {"left": YES, "right": NO, "top": YES, "bottom": NO}),
        (BLUE_CUP, {"left": NO, "right": YES, "top": NO, "bottom": YES}),
        (RED_DOG, {"left": NA, "right": NA, "top": NO, "bottom": YES}),
        (LEANING, {"left": NO, "right": YES, "top": YES, "bottom": NO}),
    ],
)
def test_location_answers(thing: Thing, expected: dict[str, int]) -> None:
    assert {side: answer(Question("location", side), thing, [], W, H) for side in SIDES} == expected


def test_other_side_refers_to_the_latest_location_question() -> None:
    colour = Question("color", "red")
    assert answer(OTHER_SIDE, RED_CUP, [LEFT, colour], W, H) == NO  # "the right?"
    assert answer(OTHER_SIDE, RED_CUP, [RIGHT, colour], W, H) == YES  # "the left?"
    assert answer(OTHER_SIDE, BLUE_CUP, [LEFT, colour], W, H) == YES
    assert answer(OTHER_SIDE, RED_CUP, [LEFT, TOP], W, H) == NO  # latest is "top" → "the bottom?"
    assert answer(OTHER_SIDE, RED_DOG, [LEFT, colour], W, H) == NA
    assert answer(OTHER_SIDE, RED_DOG, [TOP, colour], W, H) == YES
    assert answer(OTHER_SIDE, RED_CUP, [colour], W, H) == NA  # no side asked yet


def test_same_question_text_different_answer_by_history() -> None:
    # the point of the history type: identical text and target, opposite answers
    assert answer(OTHER_SIDE, RED_CUP, [LEFT], W, H) != answer(OTHER_SIDE, RED_CUP, [RIGHT], W, H)


def test_side_answer_is_exact_at_the_boundary() -> None:
    # the middle line at a quarter of the box: not cutting the central half, so the centre decides
    assert side_answer((300.0, 0.0, 80.0, 10.0), "left", W, H) == NO
    assert side_answer((300.1, 0.0, 80.0, 10.0), "right", W, H) == YES
    assert side_answer((299.9, 0.0, 80.0, 10.0), "right", W, H) == NA


def test_question_type_recovers_every_template() -> None:
    assert question_type("is it a cup?") == "object"
    assert question_type("is it an apple?") == "object"
    assert question_type("Is it red?") == "color"
    assert question_type("is it on the left?") == "location"
    assert question_type("is it at the bottom?") == "location"
    assert question_type("what about the other side?") == "history"
    assert question_type("is it the leftmost one?") == "other"


def test_types_agree_with_the_evaluation_keywords() -> None:
    for question in ALL_QUESTIONS:
        expected = "location" if question.kind == "history" else question.kind  # "the other side" is spatial
        assert keyword_type(question.text) == expected, question.text


def test_history_is_asked_only_after_a_gap_and_a_yes_no_location_answer() -> None:
    colour = (Question("color", "red"), NO)
    assert not _history_ready([(LEFT, YES)])  # the previous answer would give it away
    assert _history_ready([(LEFT, YES), colour])
    assert not _history_ready([(LEFT, NA), colour])
    assert not _history_ready([(LEFT, YES), colour, (OTHER_SIDE, NO), colour])
    assert not _history_ready([colour, colour])


def test_config_validation_names_the_option() -> None:
    with pytest.raises(ValueError, match="--regions-per-image"):
        WorldConfig(max_objects=12, regions_per_image=12)
    with pytest.raises(ValueError, match="--min-turns"):
        WorldConfig(min_turns=5, max_turns=3)


# ---------------------------------------------------------------- the questioner policy, on a generated world


def test_every_dialogue_singles_out_its_target(world: dict) -> None:
    for games in world.values():
        for dialogue in games:
            assert 2 <= len(dialogue.turns) <= 10
            scene, asked, left = dialogue.scene, [], list(dialogue.scene.things)
            for question, reply in dialogue.turns:
                assert answer(question, dialogue.target, asked, scene.width, scene.height) == reply
                left = [t for t in left if answer(question, t, asked, scene.width, scene.height) == reply]
                asked.append(question)
            assert left == [dialogue.target], dialogue.game_id


def test_answer_mix_and_type_mix_are_plausible(world: dict) -> None:
    rows = turns_of(world)
    answers = Counter(a for *_, a in rows)
    share = {label: answers[label] / len(rows) for label in (NO, YES, NA)}
    assert 0.45 <= share[NO] <= 0.60 and 0.38 <= share[YES] <= 0.52 and 0.01 <= share[NA] <= 0.06, share
    kinds = Counter(q.kind for _, _, q, _ in rows)
    assert all(kinds[k] / len(rows) >= 0.05 for k in ("object", "color", "location", "history")), kinds
    lengths = [len(d.turns) for games in world.values() for d in games]
    assert 2.5 <= np.mean(lengths) <= 6 and max(lengths) >= 7


def test_history_answers_need_the_history(world: dict) -> None:
    """Best single-turn rule (majority per question text × target position × previous answer) is near chance;
    the rule that knows the dialogue ('the opposite of the last location answer') is always right."""
    history = [(d, i, a) for d, i, q, a in turns_of(world) if q.kind == "history"]
    cells: dict[tuple, Counter] = defaultdict(Counter)
    for dialogue, turn, reply in history:
        position = tuple(side_answer(dialogue.target.bbox, side, W, H) for side in SIDES)
        cells[position, dialogue.turns[turn - 1][1]][reply] += 1
    single_turn = sum(c.most_common(1)[0][1] for c in cells.values()) / len(history)
    majority = Counter(a for *_, a in history).most_common(1)[0][1] / len(history)
    assert majority < 0.56 and single_turn < 0.60, (single_turn, majority)
    last_location = [next(a for q, a in reversed(d.turns[:i]) if q.kind == "location") for d, i, _ in history]
    assert all(reply == 1 - earlier for (_, _, reply), earlier in zip(history, last_location, strict=True))


def test_single_turn_types_do_not_depend_on_history(world: dict) -> None:
    for dialogue, _, question, reply in turns_of(world):
        if question.kind != "history":
            assert answer(question, dialogue.target, [], W, H) == reply


# ---------------------------------------------------------------- files


def test_same_seed_same_bytes_other_seed_other_world(tmp_path: Path, files: dict[str, Path]) -> None:
    again = generate_world(tmp_path / "again", SMALL)
    for key, path in files.items():
        assert path.read_bytes() == again[key].read_bytes(), key
    other = generate_world(tmp_path / "other", WorldConfig(**{**SMALL.__dict__, "seed": 4}))
    assert other["train"].read_bytes() != files["train"].read_bytes()


def test_games_read_back_in_v1_layout(files: dict[str, Path]) -> None:
    with gzip.open(files["train"], "rt") as handle:
        record = json.loads(handle.readline())
    assert set(record) == V1_GAME_KEYS
    assert set(record["image"]) == {"id", "file_name", "width", "height", "coco_url", "flickr_url"}
    assert set(record["qas"][0]) == {"id", "question", "answer"}
    assert set(record["objects"][0]) == {"id", "category", "category_id", "bbox", "area", "segment"}
    splits = {split: read_games(files[split]) for split in ("train", "valid", "test")}
    assert [len(g) for g in splits.values()] == [40, 10, 10]
    games = [game for split in splits.values() for game in split]
    assert all(g.status == "success" and (g.width, g.height) == (640, 480) for g in games)
    assert all(3 <= len(g.objects) <= 12 for g in games)
    assert all(o.category_id == CATEGORIES[o.category] for g in games for o in g.objects)
    assert all(question_type(t.question) != "other" for g in games for t in g.turns)
    assert len({t.qid for g in games for t in g.turns}) == sum(len(g.turns) for g in games)
    assert len({g.game_id for g in games}) == len(games)
    images = [{g.image for g in split} for split in splits.values()]
    assert not (images[0] & images[1] or images[0] & images[2] or images[1] & images[2])
    assert {stem.split("_")[1] for stem in set().union(*images)} == {"train2014", "val2014"}


def test_region_store_has_every_image_and_the_target_is_its_best_iou(files: dict[str, Path]) -> None:
    store = RegionStore(files["regions"])
    assert store.feature_size == SMALL.feature_size
    for game in read_games(files["valid"]) + read_games(files["test"]):
        regions = store[game.image]
        assert regions.features.shape == (SMALL.regions_per_image, SMALL.feature_size)
        assert (regions.boxes[:, 2:] <= [640, 480]).all() and (regions.boxes >= 0).all()
        x, y, w, h = game.target.bbox
        corners = np.minimum(regions.boxes[:, 2:], [x + w, y + h]) - np.maximum(regions.boxes[:, :2], [x, y])
        inter = np.clip(corners, 0, None).prod(axis=1)
        areas = (regions.boxes[:, 2:] - regions.boxes[:, :2]).prod(axis=1)
        slot = [o.object_id for o in game.objects].index(game.target_id)
        assert np.argmax(inter / (areas + w * h - inter)) == slot < SMALL.regions_per_image - 1
    store.close()


def test_region_features_encode_category_and_colour(files: dict[str, Path]) -> None:
    """An object's nearest region in other images has its category and colour: features carry the scene."""
    world = build_world(SMALL)
    scenes = {d.scene.stem: d.scene for games in world.values() for d in games}
    store = RegionStore(files["regions"])
    rows = [(stem, (t.category, t.colour), store[stem].features[slot])
            for stem, scene in scenes.items() for slot, t in enumerate(scene.things)]  # fmt: skip
    images_of = defaultdict(set)
    for stem, kind, _ in rows:
        images_of[kind].add(stem)
    rows = [row for row in rows if len(images_of[row[1]]) > 1]  # a pair seen in one image has no match
    features = np.stack([f / np.linalg.norm(f) for *_, f in rows])
    similarity = features @ features.T
    same_image = np.array([[a[0] == b[0] for b in rows] for a in rows])
    similarity[same_image] = -np.inf
    nearest = similarity.argmax(axis=1)
    assert np.mean([rows[i][1] == rows[j][1] for i, j in enumerate(nearest)]) > 0.95
    store.close()
