"""GuessWhat?! game files: both on-disk layouts (2017 v1 and the hosted v2) into typed records.

Reads `.jsonl` / `.jsonl.gz` (one game per line, layout detected per line), a single game as one JSON object,
or JSON lines from any text stream. The answer label table lives here: No = 0, Yes = 1, N/A = 2.

    games = read_games(Path("guesswhat.valid.jsonl.gz"), statuses={"success"})
    games[0].turns[0].question, games[0].target.bbox
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LABELS = ("No", "Yes", "N/A")
UNKNOWN = -1
_LABEL_IDS = {"no": 0, "yes": 1, "n/a": 2, "na": 2}
STATUSES = ("success", "failure", "incomplete")


class GameFileError(ValueError):
    """Bad input in a games file; the message names file:line and the game."""


@dataclass(frozen=True)
class Object:
    object_id: int
    category: str
    category_id: int
    bbox: tuple[float, float, float, float]  # [x, y, w, h] in pixels, as GuessWhat stores it


@dataclass(frozen=True)
class Turn:
    qid: int
    question: str
    answer: int  # index into LABELS, or UNKNOWN


@dataclass(frozen=True)
class Game:
    game_id: int
    image: str  # COCO file-name stem, e.g. COCO_val2014_000000534127
    width: int
    height: int
    target_id: int
    objects: tuple[Object, ...]
    status: str
    turns: tuple[Turn, ...]

    @property
    def target(self) -> Object:
        return next(o for o in self.objects if o.object_id == self.target_id)

    def target_box_normalised(self) -> tuple[float, float, float, float]:
        """Target box as LXMERT wants it: [x, y, w, h] pixels → (x1/W, y1/H, x2/W, y2/H), clipped to [0, 1]."""
        return normalise_box(self.target.bbox, self.width, self.height)


def normalise_box(bbox: tuple[float, float, float, float], width: float, height: float) -> tuple[float, ...]:
    x, y, w, h = bbox
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    return (clip(x / width), clip(y / height), clip((x + w) / width), clip((y + h) / height))


def parse_answer(value: object) -> int:
    """Map an answer string ('Yes', ' yes ', '<yes>', 'N/A') to its label id; raise KeyError if unknown."""
    key = str(value).strip().strip("<>").strip().casefold()
    return _LABEL_IDS[key]


def parse_statuses(spec: str) -> set[str] | None:
    """'success' → {'success'}; 'all' → None (keep every game); 'success,failure' → both."""
    if spec.strip() == "all":
        return None
    statuses = {s.strip() for s in spec.split(",") if s.strip()}
    unknown = statuses - set(STATUSES)
    if not statuses or unknown:
        raise ValueError(f"--status: unknown status {sorted(unknown)}; use 'all' or a comma list of {STATUSES}")
    return statuses


def read_games(path: Path, statuses: set[str] | None = frozenset({"success"}), keep_empty: bool = False) -> list[Game]:
    """Read a games file (.jsonl, .jsonl.gz or one JSON object); keep games whose status is in `statuses`.

    Games without questions are skipped (and counted) unless `keep_empty` (a game to play live)."""
    lines = _read_lines(path)
    first = next((line.strip() for line in lines if line.strip()), "")
    if first.startswith("{") and not first.endswith("}"):  # not a JSON line: maybe one pretty-printed game
        try:
            return parse_games([(1, json.loads("".join(lines)))], str(path), statuses, keep_empty)
        except json.JSONDecodeError:
            pass  # the line-by-line reader names the bad line
    return parse_games(_json_lines(lines, str(path)), str(path), statuses, keep_empty)


def read_games_lines(lines: Iterable[str], source: str, statuses: set[str] | None = None) -> list[Game]:
    """Read JSON lines from any stream (e.g. stdin); `source` names it in errors."""
    return parse_games(_json_lines(lines, source), source, statuses)


def _read_lines(path: Path) -> list[str]:
    """The file's lines (gzip or plain; split on \\n only, so U+2028 inside a question stays in its line)."""
    if not Path(path).is_file():
        raise GameFileError(f"{path}: no such games file")
    lines: list[str] = []
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rt", encoding="utf-8", newline="\n") as handle:
            lines.extend(handle)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        where = f"{path}:{len(lines) + 1}" if lines else str(path)
        raise GameFileError(
            f"{where}: cannot read games file ({error}); is it truncated, or not gzip / UTF-8 text?"
        ) from None
    return lines


def _json_lines(lines: Iterable[str], source: str) -> Iterable[tuple[int, dict]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise GameFileError(f"{source}:{number}: malformed JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise GameFileError(f"{source}:{number}: expected a JSON object per line, got {type(record).__name__}")
        yield number, record


def parse_games(
    records: Iterable[tuple[int, dict]], source: str, statuses: set[str] | None, keep_empty: bool = False
) -> list[Game]:
    games, skipped, seen_qids = [], Counter(), {}
    read = 0
    for number, record in records:
        read += 1
        game = _parse_record(record, f"{source}:{number}")
        for turn in game.turns:  # across the whole file, before any filter
            if turn.qid in seen_qids:
                raise GameFileError(
                    f"{source}:{number}: game {game.game_id}: question id {turn.qid} already used at line "
                    f"{seen_qids[turn.qid]}; question ids must be unique in a file"
                )
            seen_qids[turn.qid] = number
        if statuses is not None and game.status not in statuses:
            skipped[f"status {game.status}"] += 1
            continue
        if not game.turns and not keep_empty:
            skipped["no questions"] += 1
            continue
        games.append(game)
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none"
    log.info("%s: read %d games, kept %d, skipped %s", source, read, len(games), reasons)
    return games


def _parse_record(record: dict, where: str) -> Game:
    game_id = record.get("id", record.get("dialogue_id"))
    try:
        if "dialogue_id" in record or "picture" in record:
            return _parse_v2(record, where)
        return _parse_v1(record, where)
    except KeyError as error:
        raise GameFileError(f"{where}: game {game_id}: missing required field {error}") from None
    except (TypeError, ValueError, AttributeError) as error:  # e.g. v2 objects as a list instead of a dict
        if isinstance(error, GameFileError):
            raise
        raise GameFileError(f"{where}: game {game_id}: bad value ({error})") from None


def _parse_v1(record: dict, where: str) -> Game:
    image = record["image"]
    objects = tuple(_object(o["id"], o) for o in record["objects"])
    turns = tuple(_turn(qa["id"], qa["question"], qa.get("answer"), record["id"], where) for qa in record["qas"])
    return _game(record["id"], image["file_name"], image, record["object_id"], objects, record, turns, where)


def _parse_v2(record: dict, where: str) -> Game:
    picture = record["picture"]
    objects = tuple(_object(o.get("object_id", key), o) for key, o in record["objects"].items())
    game_id = record["dialogue_id"]
    turns = tuple(_turn(qa["id"], qa["q"], qa.get("a"), game_id, where) for qa in record["qas"])
    return _game(game_id, picture["file_name"], picture, record["object_id"], objects, record, turns, where)


def _object(object_id: object, o: dict) -> Object:
    x, y, w, h = (float(v) for v in o["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise ValueError(f"object {object_id}: bbox {o['bbox']} is not a finite [x, y, w, h] box")
    return Object(int(object_id), str(o["category"]), int(o["category_id"]), (x, y, w, h))


def _turn(qid: object, question: object, answer: object, game_id: object, where: str) -> Turn:
    if not isinstance(question, str):
        raise GameFileError(f"{where}: game {game_id}: question {qid}: the question is {question!r}, not text")
    if answer is None:
        label = UNKNOWN
    else:
        try:
            label = parse_answer(answer)
        except KeyError:
            raise GameFileError(
                f"{where}: game {game_id}: question {qid}: unknown answer {answer!r}; expected one of {LABELS}"
            ) from None
    return Turn(int(qid), str(question), label)


def _game(game_id, file_name, image, target_id, objects, record, turns, where) -> Game:
    target_id = int(target_id)
    if not any(o.object_id == target_id for o in objects):
        raise GameFileError(f"{where}: game {game_id}: target object {target_id} is not among the game's objects")
    width, height = int(image["width"]), int(image["height"])
    if width <= 0 or height <= 0:
        raise GameFileError(f"{where}: game {game_id}: image size {width}x{height}; width and height must be > 0")
    return Game(
        game_id=int(game_id),
        image=Path(str(file_name)).stem,
        width=width,
        height=height,
        target_id=target_id,
        objects=objects,
        status=str(record.get("status", "unknown")),
        turns=turns,
    )
