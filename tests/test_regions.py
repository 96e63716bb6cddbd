"""Importing LXMERT obj36 TSV rows into the region store, streaming, appending and resuming."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from extract.regions import ImportTsvConfig, RegionError, RegionStore
from extract.regions import import_tsv as _import


def import_tsv(paths: list[Path], out: Path, append: bool = False) -> tuple[int, int]:
    return _import(ImportTsvConfig(tuple(paths), out, append))


def tsv_row(
    stem: str, n: int, rng: np.random.Generator, feature_size: int = 2048
) -> tuple[str, np.ndarray, np.ndarray]:
    def b64(array: np.ndarray) -> str:
        return base64.b64encode(array.tobytes()).decode()

    boxes = rng.uniform(0, 400, size=(n, 4)).astype(np.float32)
    features = rng.normal(size=(n, feature_size)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    conf = np.ones(n, dtype=np.float32)
    fields = [stem, "480", "640", b64(ids), b64(conf), b64(ids), b64(conf), str(n), b64(boxes), b64(features)]
    return "\t".join(fields), boxes, features


def write_tsv(path: Path, stems: list[str], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for stem in stems:
        line, boxes, features = tsv_row(stem, 36, rng)
        rows.append(line)
        truth[stem] = (boxes, features)
    path.write_text("\n".join(rows) + "\n")
    return truth


def test_import_train_and_val_into_one_store(tmp_path: Path) -> None:
    train = write_tsv(
        tmp_path / "train2014_obj36.tsv", ["COCO_train2014_000000000009", "COCO_train2014_000000000025"], 0
    )
    val = write_tsv(tmp_path / "val2014_obj36.tsv", ["COCO_val2014_000000000042"], 1)
    out = tmp_path / "regions.h5"
    assert import_tsv([tmp_path / "train2014_obj36.tsv"], out) == (2, 0)
    assert import_tsv([tmp_path / "val2014_obj36.tsv", tmp_path / "train2014_obj36.tsv"], out, append=True) == (1, 2)
    store = RegionStore(out)
    for stem, (boxes, features) in {**train, **val}.items():
        regions = store[stem]
        assert (regions.height, regions.width) == (480, 640)
        np.testing.assert_array_equal(regions.boxes, boxes)
        np.testing.assert_allclose(regions.features, features, atol=2e-3, rtol=1e-3)  # stored as fp16
    assert store.h5["COCO_val2014_000000000042"]["features"].dtype == np.float16
    assert not (tmp_path / "regions.h5.partial").exists()


def test_rows_longer_than_csv_default_field_limit(tmp_path: Path) -> None:
    # 36 x 2048 float32 in base64 is ~393 KB, three times Python csv's default 131072-character field limit
    write_tsv(tmp_path / "a.tsv", ["COCO_val2014_000000000001"], 0)
    assert len((tmp_path / "a.tsv").read_text()) > 131072
    assert import_tsv([tmp_path / "a.tsv"], tmp_path / "r.h5") == (1, 0)


def test_existing_store_needs_append_and_bad_rows_name_the_line(tmp_path: Path) -> None:
    write_tsv(tmp_path / "a.tsv", ["COCO_val2014_000000000001"], 0)
    import_tsv([tmp_path / "a.tsv"], tmp_path / "r.h5")
    with pytest.raises(RegionError, match="pass --append"):
        import_tsv([tmp_path / "a.tsv"], tmp_path / "r.h5")
    line, _, _ = tsv_row("COCO_val2014_000000000002", 36, np.random.default_rng(0))
    fields = line.split("\t")
    fields[0], fields[7] = "COCO_val2014_000000000003", "35"  # num_boxes disagrees with the arrays
    (tmp_path / "bad.tsv").write_text("\n".join([line, "\t".join(fields)]) + "\n")
    with pytest.raises(RegionError, match=r"bad\.tsv:2: cannot decode"):
        import_tsv([tmp_path / "bad.tsv"], tmp_path / "r2.h5")
    assert not (tmp_path / "r2.h5").exists()
    # the stopped import is kept, continued only with the same files, and finished when they are fixed
    with pytest.raises(RegionError, match="a stopped import of other TSV files"):
        import_tsv([tmp_path / "a.tsv"], tmp_path / "r2.h5")
    (tmp_path / "bad.tsv").write_text(line + "\n")
    assert import_tsv([tmp_path / "bad.tsv"], tmp_path / "r2.h5") == (0, 1)  # row 1 was already in
    assert not (tmp_path / "r2.h5.partial").exists() and "COCO_val2014_000000000002" in RegionStore(tmp_path / "r2.h5")


def test_a_tsv_that_is_not_text_names_its_line(tmp_path: Path) -> None:
    line, _, _ = tsv_row("COCO_val2014_000000000002", 2, np.random.default_rng(0), feature_size=4)
    (tmp_path / "binary.tsv").write_bytes(line.encode() + b"\n\xff\xfe\x00garbage\n")
    with pytest.raises(RegionError, match=r"binary\.tsv:2: not UTF-8 text"):
        import_tsv([tmp_path / "binary.tsv"], tmp_path / "r.h5")


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    write_tsv(tmp_path / "a.tsv", ["COCO_val2014_000000000001"], 0)
    import_tsv([tmp_path / "a.tsv"], tmp_path / "r.h5")
    with pytest.raises(RegionError, match="no regions for image COCO_val2014_000000000777"):
        RegionStore(tmp_path / "r.h5")["COCO_val2014_000000000777"]
