"""Stage two: a dialogue oracle over cached per-question vectors."""
