"""The region store: detector region features for every image, in one HDF5 file keyed by COCO file stem.

Layout: one group per image stem with `features [K, D]` float16 and `boxes [K, 4]` float32 (pixel x1, y1, x2, y2),
and attrs `height`, `width`. `import_tsv` converts LXMERT's released `*_obj36.tsv` files by streaming them.

    import_tsv([Path("val2014_obj36.tsv")], Path("regions.h5"))
    regions = RegionStore(Path("regions.h5"))["COCO_val2014_000000534127"]
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

TSV_FIELDS = (
    "img_id",
    "img_h",
    "img_w",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
    "num_boxes",
    "boxes",
    "features",
)


class RegionError(ValueError):
    """Bad or missing region features; the message names the file and image."""


@dataclass(frozen=True)
class ImageRegions:
    features: np.ndarray  # [K, D] float32
    boxes: np.ndarray  # [K, 4] float32, pixel x1, y1, x2, y2
    height: int
    width: int


class RegionStore:
    """Read access to a region store; opens the file lazily so the object can cross process boundaries."""

    def __init__(self, path: Path) -> None:
        if not Path(path).is_file():
            raise RegionError(f"{path}: region store not found; make one with `pipeline regions import-tsv`")
        self.path = Path(path)
        self._h5: h5py.File | None = None

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None:
            self._h5 = open_h5(self.path, "region store")
        return self._h5

    def __contains__(self, stem: str) -> bool:
        return stem in self.h5 and "boxes" in self.h5[stem]

    def num_regions(self, stem: str) -> int:
        """K for an image in the store (read from the file's metadata, not its data)."""
        return int(self.h5[stem]["boxes"].shape[0])

    def __getitem__(self, stem: str) -> ImageRegions:
        if stem not in self:
            raise RegionError(f"{self.path}: no regions for image {stem}")
        group = self.h5[stem]
        return ImageRegions(
            features=group["features"][:].astype(np.float32),
            boxes=group["boxes"][:].astype(np.float32),
            height=int(group.attrs["height"]),
            width=int(group.attrs["width"]),
        )

    @property
    def feature_size(self) -> int:
        for stem in self.h5:
            return int(self.h5[stem]["features"].shape[1])
        raise RegionError(f"{self.path}: region store is empty")

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_h5": None}


def open_h5(path: Path, what: str) -> h5py.File:
    """Open an HDF5 file for reading; a file that is not HDF5 is one error naming it."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise RegionError(f"{path}: cannot open as HDF5 ({error}); is it a {what}?") from None


def write_image(h5: h5py.File, stem: str, features: np.ndarray, boxes: np.ndarray, height: int, width: int) -> None:
    """Add one image's regions to an open store. `boxes` go last, so a group with boxes is complete."""
    if stem in h5:
        del h5[stem]  # a group left half-written by a killed import
    group = h5.create_group(stem)
    group.attrs["height"], group.attrs["width"] = int(height), int(width)
    group.create_dataset("features", data=np.asarray(features, dtype=np.float16))
    group.create_dataset("boxes", data=np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


def _decode(text: str, dtype: type, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape)
    except ValueError as error:
        raise RegionError(f"{where}: cannot decode array of shape {shape} ({error})") from None


@dataclass(frozen=True)
class ImportTsvConfig:
    """Options of `pipeline regions import-tsv`."""

    tsv: tuple[Path, ...] = field(metadata={"help": "LXMERT *_obj36.tsv files.", "argument": True})
    out: Path = field(metadata={"help": "Region store to write (.h5)."})
    append: bool = field(default=False, metadata={"help": "Add to an existing store; images there are skipped."})

    def __post_init__(self) -> None:
        if not self.tsv:
            raise ValueError("import-tsv: give at least one TSV file")


def import_tsv(config: ImportTsvConfig) -> tuple[int, int]:
    """Stream LXMERT obj36 TSV files into a region store; returns (images added, images already present).

    Memory stays flat: one row is decoded, written and dropped at a time. Without `append` a new store is built
    under a temporary name and renamed at the end; rerunning after a crash continues that temporary file.
    With `append`, rows go straight into `out`, and images already there are skipped.
    """
    tsv_paths, out, append = config.tsv, config.out, config.append
    if out.exists() and not append:
        raise RegionError(f"{out}: region store exists; pass --append to add images to it")
    for path in tsv_paths:
        if not path.is_file():
            raise RegionError(f"{path}: TSV file not found")
    target = out if append else out.with_name(out.name + ".partial")
    csv.field_size_limit(sys.maxsize)  # the base64 feature column is ~400 KB per row
    added = present = 0
    sources = json.dumps([str(p.resolve()) for p in tsv_paths])
    if not append and target.exists():  # a stopped import: continue it, but only with the same files
        with h5py.File(target, "r") as h5:
            if h5.attrs.get("source_tsv") != sources:
                raise RegionError(f"{target}: a stopped import of other TSV files; rerun it with those, or delete it")
            log.info("%s: continuing a stopped import (%d images already there)", target, len(h5))
    with h5py.File(target, "a") as h5:
        if not append:
            h5.attrs["source_tsv"] = sources
        for path in tsv_paths:
            counts = _import_file(h5, path)
            added, present = added + counts[0], present + counts[1]
    if not append:
        target.replace(out)
    log.info("%s: %d images added, %d already present", out, added, present)
    return added, present


def _import_file(h5: h5py.File, path: Path) -> tuple[int, int]:
    """One TSV into an open store, row by row: (images added, images already present)."""
    added = present = 0
    with open(path, "rb") as handle, tqdm(desc=f"import {path.name}", unit="img") as bar:
        rows = csv.DictReader(_text_lines(handle, path), fieldnames=TSV_FIELDS, delimiter="\t")
        for number, row in enumerate(rows, start=1):
            if row["img_id"] in h5 and "boxes" in h5[row["img_id"]]:
                present += 1
            else:
                _write_row(h5, row, f"{path}:{number}")
                added += 1
            bar.update()
    return added, present


def _text_lines(handle: BinaryIO, path: Path) -> Iterator[str]:
    """Lines decoded one at a time, so a line that is not UTF-8 is named by its number."""
    for number, line in enumerate(handle, start=1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            raise RegionError(f"{path}:{number}: not UTF-8 text; is this an LXMERT obj36 TSV?") from None


def _write_row(h5: h5py.File, row: dict, where: str) -> None:
    try:
        n = int(row["num_boxes"])
        height, width = int(row["img_h"]), int(row["img_w"])
    except (TypeError, ValueError):
        raise RegionError(f"{where}: bad num_boxes/img_h/img_w; is this an LXMERT obj36 TSV?") from None
    if row.get("features") is None:
        raise RegionError(f"{where}: row has fewer than {len(TSV_FIELDS)} columns")
    boxes = _decode(row["boxes"], np.float32, (n, 4), where)
    features = _decode(row["features"], np.float32, (n, -1), where)
    write_image(h5, row["img_id"], features, boxes, height, width)
