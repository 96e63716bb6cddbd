"""Stage one: GuessWhat games + region features → LXMERT vectors per question, cached in HDF5."""

from extract.cache import SCHEMA_VERSION, read_rows, write_cache
from extract.games import LABELS, UNKNOWN, Game, GameFileError, Object, Turn, parse_answer, read_games

__all__ = [
    "LABELS",
    "SCHEMA_VERSION",
    "UNKNOWN",
    "Game",
    "GameFileError",
    "Object",
    "Turn",
    "parse_answer",
    "read_games",
    "read_rows",
    "write_cache",
]
