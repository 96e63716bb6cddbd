"""classify.data: reading a cache into memory, validation errors, padded batches of whole games."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_classify_helpers import FEATURES, toy_split, write_sample_cache

from classify.data import (
    IGNORE_INDEX,
    PREVIOUS_START,
    PREVIOUS_UNKNOWN,
    batches,
    make_batch,
    make_split,
    read_split,
)


def test_read_split_keeps_games_contiguous_and_fp16(tmp_path):
    path = write_sample_cache(tmp_path / "train.h5", "train")
    split = read_split(path, target_vision=False, questions=True)
    assert split.pooled.dtype == np.float16 and split.target_vision is None
    assert split.feature_size == FEATURES
    assert split.lengths.tolist() == [8, 3, 5, 16, 5, 3]  # the six sample games, in file order
    assert split.question[0] == "is it on the back coutertop?"
    assert split.answer[:8].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]


def test_batch_pads_with_ignore_index_and_encodes_previous_answers():
    answers = np.array([1, -1, 0, 2, 1, 0], dtype=np.int8)  # games of 3, 1 and 2 turns; one unknown answer
    split = toy_split([3, 1, 2], answers=answers)
    batch = make_batch(split, np.array([0, 1, 2]))
    assert batch.pooled.shape == (3, 3, 8) and batch.pooled.dtype.is_floating_point
    assert batch.lengths.tolist() == [3, 1, 2] and batch.lengths.device.type == "cpu"
    assert batch.labels.tolist() == [
        [1, IGNORE_INDEX, 0],
        [2, IGNORE_INDEX, IGNORE_INDEX],
        [1, 0, IGNORE_INDEX],
    ]
    start, unknown = PREVIOUS_START, PREVIOUS_UNKNOWN
    assert batch.previous.tolist() == [[start, 1, unknown], [start, unknown, unknown], [start, 1, unknown]]
    assert batch.rows.tolist() == [[0, 1, 2], [3, -1, -1], [4, 5, -1]]
    assert np.array_equal(batch.pooled[2, 1].numpy(), split.pooled[5].astype(np.float32))


def test_shuffling_is_seeded_and_covers_every_game():
    split = toy_split([2, 3, 1, 4, 2, 5, 1])
    first = [b.rows[:, 0].tolist() for b in batches(split, 3, np.random.default_rng(7))]
    again = [b.rows[:, 0].tolist() for b in batches(split, 3, np.random.default_rng(7))]
    other = [b.rows[:, 0].tolist() for b in batches(split, 3, np.random.default_rng(8))]
    assert first == again and first != other
    assert sorted(sum(first, [])) == split.starts[:-1].tolist()


def test_schema_version_mismatch_is_an_error(tmp_path):
    path = write_sample_cache(tmp_path / "old.h5", "valid", schema_version=99)
    with pytest.raises(ValueError, match="schema version 99"):
        read_split(path)


def test_nan_features_name_the_first_questions(tmp_path):
    path = write_sample_cache(tmp_path / "nan.h5", "valid")
    with h5py.File(path, "r+") as h5:
        h5["target_vision"][3, 5] = np.nan
        qid = int(h5["qid"][3])
    with pytest.raises(ValueError, match=f"target_vision has NaN/inf features, first at questions {qid}"):
        read_split(path)
    assert read_split(path, target_vision=False).num_games == 6  # the pooled vectors alone are fine


def test_empty_and_non_contiguous_splits_are_errors():
    with pytest.raises(ValueError, match="empty"):
        toy_split([])
    split = toy_split([2, 2])
    with pytest.raises(ValueError, match="contiguous per game"):
        make_split(
            "bad",
            qid=split.qid,
            game_id=np.array([0, 1, 0, 1]),
            turn=np.array([0, 0, 1, 1]),
            answer=split.answer,
            target_category=split.target_category,
            target_box=split.target_box,
            pooled=split.pooled,
        )
