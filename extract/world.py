"""A synthetic GuessWhat?! world: games files (v1 layout) and a region store, generated from a seed.

It owns the scenes (640×480 images of 3–12 objects, each a COCO category, a colour and a box), the question
templates and their answer rules, the questioner policy that builds dialogues, and the writers. Output in
`out_dir`: `train.jsonl.gz`, `valid.jsonl.gz`, `test.jsonl.gz` (status "success", readable by `read_games`)
and `regions.h5` (our region store: object regions first, then background regions up to `regions_per_image`;
each feature is a fixed random embedding of category + colour, or of a background kind, plus noise).

Question types (`question_type(text)` recovers them; names as in `classify.questions`, which files the history
question under "location"): "object" ("is it a cup?"), "color" ("is it red?"), "location" ("is it on the
left?" / "at the top?"; N/A when the middle line cuts the target's central half) and "history": "what about
the other side?", which asks the latest location question again for the opposite side.
Its answer is a function of the target's own box and of which side was asked earlier; the questioner picks
sides without knowing the target, so from the current turn alone it is a coin flip, while a model that
remembers the earlier question (or its answer: the history answer is its negation) gets it right. The issue's
"the leftmost one?" (a ranking among the objects still consistent with the dialogue) was replaced on purpose:
the stage-two models see pooled vectors about the target, and a ranking among other objects is nearly
unlearnable from them. "The other side?" is asked only after a Yes/No location answer with at least one turn
between, so the previous answer alone does not give it away either.

    splits = generate_world(Path("demo/world"), WorldConfig(seed=0, train_games=200))
    games = read_games(splits["train"])
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np

from extract.games import LABELS
from extract.regions import write_image

log = logging.getLogger(__name__)

NO, YES, NA = 0, 1, 2  # the label ids of extract.games.LABELS
CATEGORIES = {
    "bicycle": 2,
    "car": 3,
    "cat": 17,
    "dog": 18,
    "umbrella": 28,
    "bottle": 44,
    "cup": 47,
    "bowl": 51,
    "apple": 53,
    "chair": 62,
    "book": 84,
    "clock": 85,
}  # fmt: skip  (real COCO category ids; no "person": the keyword types call that a super-category)
COLOURS = ("red", "blue", "green", "yellow", "white", "black")
SIDES = ("left", "right", "top", "bottom")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
QUESTION_TYPES = ("object", "color", "location", "history")
SPLITS = ("train", "valid", "test")
WANDER = 0.2  # chance that the questioner asks something that need not narrow things down, as people do
KIND_WEIGHTS = {"object": 1.5, "color": 1.0, "location": 1.5}  # how often the questioner asks each type
BACKGROUND_KINDS = 4  # "sky", "wall", "floor", "table": distinct embeddings, never a GuessWhat object


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the synthetic world; the defaults make a world the CPU demo trains on in minutes."""

    seed: int = field(default=0, metadata={"help": "Seed: the same seed gives the same files."})
    train_games: int = field(default=2000, metadata={"help": "Games in train.jsonl.gz."})
    valid_games: int = field(default=300, metadata={"help": "Games in valid.jsonl.gz."})
    test_games: int = field(default=300, metadata={"help": "Games in test.jsonl.gz."})
    feature_size: int = field(default=128, metadata={"help": "Region feature size (real detector: 2048)."})
    regions_per_image: int = field(default=16, metadata={"help": "Detector regions per image (K)."})
    min_objects: int = field(default=3, metadata={"help": "Fewest objects in an image."})
    max_objects: int = field(default=12, metadata={"help": "Most objects in an image."})
    min_turns: int = field(default=2, metadata={"help": "Shortest dialogue."})
    max_turns: int = field(default=10, metadata={"help": "Longest dialogue."})
    games_per_image: int = field(default=3, metadata={"help": "Most games (targets) per image."})
    history_rate: float = field(default=0.8, metadata={"help": "Chance to ask 'the other side?' if it can."})
    noise: float = field(default=0.5, metadata={"help": "Std of the Gaussian noise on region features."})

    def __post_init__(self) -> None:
        if min(self.train_games, self.valid_games, self.test_games) < 1:
            raise ValueError("--train-games/--valid-games/--test-games: each split needs at least one game")
        if not 2 <= self.min_objects <= self.max_objects:
            raise ValueError("--min-objects/--max-objects: need 2 <= min-objects <= max-objects")
        if self.regions_per_image <= self.max_objects:
            raise ValueError("--regions-per-image: must exceed --max-objects (the target replaces the last)")
        if not 1 <= self.min_turns <= self.max_turns:
            raise ValueError("--min-turns/--max-turns: need 1 <= min-turns <= max-turns")
        if self.feature_size < 1 or self.games_per_image < 1 or not 0 <= self.history_rate <= 1:
            raise ValueError("--feature-size/--games-per-image must be >= 1 and --history-rate in [0, 1]")


@dataclass(frozen=True)
class Thing:
    object_id: int
    category: str
    colour: str
    bbox: tuple[float, float, float, float]  # [x, y, w, h] pixels, as GuessWhat stores it


@dataclass(frozen=True)
class Scene:
    image_id: int
    stem: str  # COCO_train2014_000000000001
    things: tuple[Thing, ...]
    width: int = 640
    height: int = 480


@dataclass(frozen=True)
class Question:
    kind: str  # one of QUESTION_TYPES
    value: str = ""  # the category, colour or side asked about; "" for history

    @property
    def text(self) -> str:
        if self.kind == "object":
            return f"is it {'an' if self.value[0] in 'aeiou' else 'a'} {self.value}?"
        if self.kind == "color":
            return f"is it {self.value}?"
        if self.kind == "location":
            return f"is it {'on' if self.value in ('left', 'right') else 'at'} the {self.value}?"
        return "what about the other side?"


@dataclass(frozen=True)
class Dialogue:
    game_id: int
    scene: Scene
    target: Thing
    turns: tuple[tuple[Question, int], ...]  # (question, answer label id) in order


ALL_QUESTIONS = (
    [Question("object", c) for c in CATEGORIES] + [Question("color", c) for c in COLOURS]
    + [Question("location", s) for s in SIDES] + [Question("history")]
)  # fmt: skip
_TYPE_OF_TEXT = {q.text: q.kind for q in ALL_QUESTIONS}


def question_type(question: str) -> str:
    """The template type of a question of this world ("object", ..., "history"); "other" for other text."""
    return _TYPE_OF_TEXT.get(question.strip().casefold(), "other")


# ---------------------------------------------------------------- answer rules


def side_answer(bbox: Sequence[float], side: str, width: float, height: float) -> int:
    """Is the box on `side` of the image? N/A when that axis's middle line cuts the box's central half."""
    x, y, w, h = bbox
    start, size, middle = (x, w, width / 2) if side in ("left", "right") else (y, h, height / 2)
    if start + size / 4 < middle < start + size * 3 / 4:
        return NA
    return YES if (start + size / 2 < middle) == (side in ("left", "top")) else NO


def answer(question: Question, target: Thing, asked: Sequence[Question], width: float, height: float) -> int:
    """The oracle's answer about `target`; `asked` is the dialogue's earlier questions, oldest first."""
    if question.kind == "object":
        return YES if target.category == question.value else NO
    if question.kind == "color":
        return YES if target.colour == question.value else NO
    if question.kind == "location":
        return side_answer(target.bbox, question.value, width, height)
    earlier = next((q for q in reversed(asked) if q.kind == "location"), None)
    if earlier is None:
        return NA  # "the other side" of nothing
    return side_answer(target.bbox, OPPOSITE[earlier.value], width, height)


# ---------------------------------------------------------------- questioner policy


def _history_ready(turns: Sequence[tuple[Question, int]]) -> bool:
    """A Yes/No location question at least two turns back, and no 'other side' asked since."""
    for back, (question, reply) in enumerate(reversed(turns), start=1):
        if question.kind == "history":
            return False
        if question.kind == "location":
            return back >= 2 and reply != NA
    return False


def _next_question(
    scene: Scene, candidates: list[Thing], turns: list, rng: np.random.Generator, rate: float
) -> Question | None:
    """A question that splits the candidates (any new one when wandering); None when none can split them."""
    asked = [q for q, _ in turns]
    if _history_ready(turns) and rng.random() < rate:
        return Question("history")
    options: dict[str, list[tuple[Question, float]]] = {kind: [] for kind in QUESTION_TYPES[:3]}
    wander = len(candidates) == 1 or rng.random() < WANDER
    for question in ALL_QUESTIONS[:-1]:
        replies = [answer(question, c, asked, scene.width, scene.height) for c in candidates]
        if (len(set(replies)) > 1 or wander) and question not in asked:
            # people lean mildly to questions that halve the candidates (more Yes; games not the shortest)
            share = replies.count(YES) / len(replies)
            options[question.kind].append((question, min(share, 1 - share) + 0.6))
    kinds = [kind for kind, questions in options.items() if questions]
    if not kinds:
        return None  # candidates that no template tells apart: the caller picks another target
    weights = [KIND_WEIGHTS[k] * (3.0 if k == "object" and not turns else 1.0) for k in kinds]  # "a cup?" 1st
    return _pick(kinds, weights, rng, options)


def _pick(kinds: list[str], weights: list[float], rng: np.random.Generator, options: dict) -> Question:
    kind = kinds[rng.choice(len(kinds), p=np.array(weights) / sum(weights))]
    questions, weights = zip(*options[kind], strict=True)
    return questions[rng.choice(len(questions), p=np.array(weights) / sum(weights))]


def play(
    scene: Scene, target: Thing, rng: np.random.Generator, config: WorldConfig
) -> tuple[tuple[Question, int], ...] | None:
    """Ask questions until only the target fits every answer; None when that fails within max_turns."""
    candidates, turns = list(scene.things), []
    while len(turns) < config.max_turns:
        if len(candidates) == 1 and len(turns) >= config.min_turns:
            if not (_history_ready(turns) and rng.random() < config.history_rate):
                break
            question = Question("history")  # a last check before guessing: "...and the other side?"
        else:
            question = _next_question(scene, candidates, turns, rng, config.history_rate)
        if question is None:
            return None
        asked = [q for q, _ in turns]
        reply = answer(question, target, asked, scene.width, scene.height)
        candidates = [c for c in candidates if answer(question, c, asked, scene.width, scene.height) == reply]
        turns.append((question, reply))
    return tuple(turns) if len(candidates) == 1 else None


# ---------------------------------------------------------------- scenes and splits


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def make_scene(rng: np.random.Generator, image_id: int, first_object_id: int, config: WorldConfig) -> Scene:
    """Objects of a few categories and colours (so repeats are common); boxes overlap little (IoU < 0.3)."""
    width, height = 640, 480
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    kinds = rng.choice(list(CATEGORIES), size=int(rng.integers(2, 4)), replace=False)
    colours = rng.choice(COLOURS, size=int(rng.integers(2, 4)), replace=False)
    things: list[Thing] = []
    for index in range(count):
        for _ in range(20):
            w, h = rng.uniform(25, 110), rng.uniform(25, 100)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            bbox = tuple(round(float(v), 2) for v in (x, y, w, h))
            if all(_iou(bbox, t.bbox) < 0.3 for t in things):
                break
        category, colour = str(rng.choice(kinds)), str(rng.choice(colours))
        things.append(Thing(first_object_id + index, category, colour, bbox))
    stem = f"COCO_{'train' if rng.random() < 0.66 else 'val'}2014_{image_id:012d}"
    return Scene(image_id, stem, tuple(things), width, height)


def make_split(count: int, rng: np.random.Generator, ids: dict, config: WorldConfig) -> list[Dialogue]:
    """`count` successful games; each image gets 1..games_per_image targets. `ids` holds the next free ids."""
    dialogues: list[Dialogue] = []
    while len(dialogues) < count:
        scene = make_scene(rng, ids["image"], ids["object"], config)
        ids["image"] += 1
        ids["object"] += len(scene.things)
        wanted = int(rng.integers(1, config.games_per_image + 1))
        for index in rng.permutation(len(scene.things)):
            if wanted == 0 or len(dialogues) == count:
                break
            target = scene.things[index]
            turns = play(scene, target, rng, config)
            if turns is not None:
                dialogues.append(Dialogue(ids["game"], scene, target, turns))
                ids["game"] += 1
                wanted -= 1
    return dialogues


def build_world(config: WorldConfig) -> dict[str, list[Dialogue]]:
    """All three splits in memory; images never cross splits (as in GuessWhat)."""
    ids = {"image": 1, "object": 1, "game": 1}
    counts = (config.train_games, config.valid_games, config.test_games)
    return {
        split: make_split(count, np.random.default_rng([config.seed, 1, index]), ids, config)
        for index, (split, count) in enumerate(zip(SPLITS, counts, strict=True))
    }


# ---------------------------------------------------------------- writers


def region_features(scene: Scene, config: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Detector output for one image: features [K, D] and boxes [K, 4] (pixel x1y1x2y2), objects first."""
    table = np.random.default_rng([config.seed, 2])  # the same embeddings for every image of the world
    size = config.feature_size
    category = dict(zip(CATEGORIES, table.normal(size=(len(CATEGORIES), size)), strict=True))
    colour = dict(zip(COLOURS, table.normal(size=(len(COLOURS), size)), strict=True))
    background = table.normal(size=(BACKGROUND_KINDS, size))
    rng = np.random.default_rng([config.seed, 3, scene.image_id])
    features = rng.normal(scale=config.noise, size=(config.regions_per_image, size))
    boxes = np.zeros((config.regions_per_image, 4))
    for slot, thing in enumerate(scene.things):
        x, y, w, h = thing.bbox
        boxes[slot] = np.array([x, y, x + w, y + h]) + rng.normal(scale=2.0, size=4)  # detectors are inexact
        features[slot] += category[thing.category] + colour[thing.colour]
    for slot in range(len(scene.things), config.regions_per_image):
        x1, y1 = rng.uniform(0, scene.width * 0.6), rng.uniform(0, scene.height * 0.6)
        boxes[slot] = [x1, y1, rng.uniform(x1 + 40, scene.width), rng.uniform(y1 + 40, scene.height)]
        features[slot] += background[rng.integers(BACKGROUND_KINDS)]
    boxes = np.clip(boxes, 0, [scene.width, scene.height, scene.width, scene.height])
    return features.astype(np.float32), boxes.astype(np.float32)


def game_record(dialogue: Dialogue, first_qid: int) -> dict:
    """One game in the 2017 (v1) layout; question ids count up from `first_qid`."""
    scene, turns = dialogue.scene, dialogue.turns
    objects = [
        {"id": t.object_id, "category": t.category, "category_id": CATEGORIES[t.category],
         "bbox": list(t.bbox), "area": round(t.bbox[2] * t.bbox[3], 2), "segment": [_polygon(t.bbox)]}
        for t in scene.things
    ]  # fmt: skip
    qas = [{"id": first_qid + n, "question": q.text, "answer": LABELS[a]} for n, (q, a) in enumerate(turns)]
    started = datetime(2016, 7, 8, 15, 0, 0) + timedelta(minutes=dialogue.game_id)
    return {
        "id": dialogue.game_id,
        "image": {"id": scene.image_id, "file_name": f"{scene.stem}.jpg", "width": scene.width,
                  "height": scene.height, "coco_url": f"http://mscoco.org/images/{scene.image_id}",
                  "flickr_url": ""},
        "qas": qas,
        "objects": objects,
        "object_id": dialogue.target.object_id,
        "status": "success",
        "questioner_id": dialogue.game_id % 97,
        "timestamp": started.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip


def _polygon(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = bbox
    return [round(v, 2) for v in (x, y, x + w, y, x + w, y + h, x, y + h)]


def generate_world(out_dir: Path, config: WorldConfig | None = None) -> dict[str, Path]:
    """Write the three games files and `regions.h5` into `out_dir`; returns {split: path, "regions": path}."""
    config = config or WorldConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    world, paths, qid = build_world(config), {}, 1
    for split, dialogues in world.items():
        lines = []
        for dialogue in dialogues:
            lines.append(json.dumps(game_record(dialogue, qid), separators=(",", ":")))
            qid += len(dialogue.turns)
        paths[split] = out_dir / f"{split}.jsonl.gz"
        partial = paths[split].with_name(paths[split].name + ".partial")
        with open(partial, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as packed:
            packed.write(("\n".join(lines) + "\n").encode("utf-8"))  # mtime 0: same seed, same bytes
        os.replace(partial, paths[split])
    paths["regions"] = out_dir / "regions.h5"
    partial = paths["regions"].with_name("regions.h5.partial")
    scenes = {d.scene.stem: d.scene for dialogues in world.values() for d in dialogues}
    with h5py.File(partial, "w") as h5:
        for stem in sorted(scenes):
            features, boxes = region_features(scenes[stem], config)
            write_image(h5, stem, features, boxes, scenes[stem].height, scenes[stem].width)
    os.replace(partial, paths["regions"])
    counts = {split: (len(d), sum(len(g.turns) for g in d)) for split, d in world.items()}
    log.info("%s: synthetic world (games, questions) %s, %d images", out_dir, counts, len(scenes))
    return paths
