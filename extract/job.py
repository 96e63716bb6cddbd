"""The extraction job behind `pipeline extract`: games + regions + LXMERT → one oracle cache file.

Resumable and shardable: games are cut into chunks of about `chunk_size` questions (never splitting a game);
each finished chunk is saved atomically as `OUT.parts/chunk_NNNNN.npz`, so a killed run loses at most the chunk
in flight and `--resume` skips finished chunks. Under torchrun, rank r encodes chunks r, r + world, ...; rank 0
merges every chunk, in order, into `OUT` (written under a temporary name, then renamed).

    summary = run_extract(ExtractConfig(games=..., regions=..., out=Path("cache/valid.h5")), device="cpu")
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from tqdm import tqdm

from extract.cache import FEATURE_DATASETS, count_rows, write_metadata
from extract.encoder import Encoder, Example, OracleSettings, TargetFeatures, inject_target
from extract.games import Game, parse_statuses, read_games
from extract.regions import RegionError, RegionStore

log = logging.getLogger(__name__)

DEFAULT_MODEL = "unc-nlp/lxmert-base-uncased"
Precision = Literal["auto", "fp32", "bf16", "fp16"]


def option(default: object, help: str) -> object:
    """A config field with a default and the help text `pipeline` shows for it."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ExtractConfig:
    """Options of `pipeline extract`."""

    games: Path = field(metadata={"help": "Games file (.jsonl or .jsonl.gz, GuessWhat v1 or v2 layout)."})
    regions: Path = field(metadata={"help": "Region store (.h5) made by `pipeline regions import-tsv`."})
    out: Path = field(metadata={"help": "Output cache file, e.g. cache/valid.h5."})
    model: str = option(DEFAULT_MODEL, "LXMERT hub id or directory (e.g. one written by `pipeline finetune`).")
    target_features: Path | None = option(
        None,
        "Per-object target features (.h5 keyed by object id); default: "
        "features of the region with the highest IoU with the target box.",
    )
    status: str = option("success", "Games to keep: 'all' or a comma list of success,failure,incomplete.")
    batch_size: int = option(64, "Questions per forward pass.")
    chunk_size: int = option(2048, "Questions per saved chunk (the unit of resume).")
    precision: Precision = option("auto", "auto = bf16 autocast on CUDA (fp16 if bf16 is unsupported), fp32 on CPU.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    overwrite: bool = option(False, "Replace an existing output file.")
    resume: bool = option(False, "Continue a killed run from its finished chunks.")
    skip_missing: bool = option(False, "Skip games whose image is not in the region store (counted in the summary).")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.chunk_size < 1:
            raise ValueError(f"--chunk-size must be ≥ 1, got {self.chunk_size}")
        parse_statuses(self.status)


@dataclass(frozen=True)
class Summary:
    games: int
    questions: int
    skipped_missing: int
    seconds: float
    bytes: int


def chunk_games(games: list[Game], chunk_size: int) -> list[tuple[int, int]]:
    """(first game, end game) index ranges holding about `chunk_size` questions each."""
    chunks, start, rows = [], 0, 0
    for index, game in enumerate(games):
        rows += len(game.turns)
        if rows >= chunk_size:
            chunks.append((start, index + 1))
            start, rows = index + 1, 0
    if start < len(games):
        chunks.append((start, len(games)))
    return chunks


def check_inputs(
    games: list[Game], store: RegionStore, targets: TargetFeatures | None, skip_missing: bool
) -> tuple[list[Game], int]:
    """Games whose inputs are all there, and how many were skipped for a missing image.

    Checked before any encoding, so a bad input stops the job before it writes anything: an image missing from
    the store (an error, or skipped with `skip_missing`), an image without regions, a target without features.
    """
    missing = [g for g in games if g.image not in store]
    if missing and not skip_missing:
        g = missing[0]
        raise RegionError(
            f"{store.path}: no regions for image {g.image} (game {g.game_id}; {len(missing)} games affected); "
            "import them or pass --skip-missing"
        )
    if missing:
        log.warning("skipping %d games whose image is not in %s", len(missing), store.path)
    keep = {id(g) for g in missing}
    games = [g for g in games if id(g) not in keep]
    for g in {g.image: g for g in games}.values():
        if store.num_regions(g.image) == 0:
            raise RegionError(f"{store.path}: image {g.image} (game {g.game_id}) has no regions; re-import it")
    if targets is not None:
        size = store.feature_size
        for g in games:
            found = targets.size(g.target_id) if g.target_id in targets else 0
            if found != size:
                raise RegionError(
                    f"{targets.path}: game {g.game_id}: target object {g.target_id} needs {size} features, found "
                    f"{found or 'none'}"
                )
    return games, len(missing)


def check_oracle_inputs(
    model: str, visual_feat_dim: int, settings: OracleSettings, store: RegionStore, targets: TargetFeatures | None
) -> None:
    """The region store and target mode must be what the LXMERT (or fine-tuned oracle) `model` was made for."""
    if store.feature_size != visual_feat_dim:
        raise RegionError(
            f"{store.path}: region features have size {store.feature_size} but {model} expects {visual_feat_dim}"
        )
    if settings.target_mode == "file" and targets is None:
        raise ValueError(
            f"{model}: this oracle was fine-tuned with per-object target features; "
            "pass the same file with --target-features"
        )
    if settings.head != "none" and settings.target_mode == "nearest" and targets is not None:
        log.warning("%s was fine-tuned with nearest-region targets; --target-features changes its inputs", model)


def _prepare_parts(config: ExtractConfig, meta: dict, rank: int) -> Path:
    parts = config.out.with_name(config.out.name + ".parts")
    if rank != 0:
        return parts
    if config.out.is_dir():
        raise IsADirectoryError(f"--out {config.out}: is a directory; give a file name such as cache/valid.h5")
    if config.out.exists() and not config.overwrite:
        finished = " and is complete (nothing to resume)" if config.resume and not parts.exists() else ""
        raise FileExistsError(f"{config.out}: output exists{finished}; pass --overwrite to replace it")
    meta_path = parts / "meta.json"
    if parts.exists() and config.resume and meta_path.is_file():
        before = json.loads(meta_path.read_text())
        changed = sorted(k for k in meta.keys() | before.keys() if before.get(k) != meta.get(k))
        if changed:
            raise ValueError(
                f"{parts}: the partial run had other {', '.join(changed)}; resume with the same inputs and "
                "options, or use --overwrite to start again"
            )
        return parts
    if parts.exists() and not (config.resume or config.overwrite):
        raise FileExistsError(f"{parts}: a partial run exists; pass --resume to continue it or --overwrite to restart")
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    meta_path.write_text(json.dumps(meta))
    return parts


def encode_games(
    encoder: Encoder, games: list[Game], store: RegionStore, targets: TargetFeatures | None, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(pooled, target_vision) float32 [N, H] for every question of `games`, in row order."""
    examples = []
    for game in games:
        visual = inject_target(game, store[game.image], targets)
        examples.extend(Example(turn.question, visual) for turn in game.turns)
    return encoder.encode(examples, batch_size)


def _save_chunk(parts: Path, index: int, pooled: np.ndarray, vision: np.ndarray) -> None:
    tmp = parts / f"chunk_{index:05d}.tmp.npz"
    np.savez(tmp, pooled=pooled.astype(np.float16), target_vision=vision.astype(np.float16))
    tmp.replace(parts / f"chunk_{index:05d}.npz")
    log.debug("saved chunk %d", index)


def _merge(
    config: ExtractConfig, parts: Path, games: list[Game], chunks: list[tuple[int, int]], hidden: int, attrs: dict
) -> None:
    tmp = config.out.with_name(config.out.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        write_metadata(h5, games, hidden, attrs)
        row = 0
        for index, (first, end) in enumerate(chunks):
            with np.load(parts / f"chunk_{index:05d}.npz") as chunk:
                n = count_rows(games[first:end])
                for name in FEATURE_DATASETS:
                    h5[name][row : row + n] = chunk[name]
                row += n
    tmp.replace(config.out)
    shutil.rmtree(parts)


def run_extract(
    config: ExtractConfig,
    device: str,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    encoder: Encoder | None = None,
) -> Summary | None:
    """Encode every question of `config.games`; rank 0 returns the summary, other ranks None."""
    started = time.perf_counter()
    games = read_games(config.games, parse_statuses(config.status))
    store = RegionStore(config.regions)
    targets = TargetFeatures(config.target_features) if config.target_features else None
    games, skipped = check_inputs(games, store, targets, config.skip_missing)
    if not games:
        raise ValueError(f"{config.games}: no games left to encode (status filter '{config.status}')")
    encoder = encoder or Encoder.load(config.model, device=device, precision=config.precision)
    check_oracle_inputs(config.model, encoder.visual_feat_dim, encoder.settings, store, targets)
    chunks = chunk_games(games, config.chunk_size)
    attrs = {
        **encoder.describe(config.model),
        "target_mode": "file" if targets else "nearest",
        "target_features": str(config.target_features or ""),
        "status_filter": config.status,
        "source_games": str(config.games),
    }
    # what a resumed run must share with the killed one for its chunks to be the same vectors
    meta = {**attrs, "precision": str(encoder.dtype), "rows": count_rows(games), "chunks": len(chunks)}
    parts = _prepare_parts(config, meta, rank)
    barrier()  # rank 0 has created (or validated) the parts folder
    mine = [i for i in range(len(chunks)) if i % world == rank and not (parts / f"chunk_{i:05d}.npz").exists()]
    todo_rows = sum(count_rows(games[chunks[i][0] : chunks[i][1]]) for i in mine)
    with tqdm(total=todo_rows, desc="extract", unit="q", disable=rank != 0) as bar:
        for index in mine:
            first, end = chunks[index]
            pooled, vision = encode_games(encoder, games[first:end], store, targets, config.batch_size)
            _save_chunk(parts, index, pooled, vision)
            bar.update(pooled.shape[0])
    barrier()  # every rank's chunks are on disk
    if rank != 0:
        return None
    _merge(config, parts, games, chunks, encoder.hidden_size, attrs)
    seconds = time.perf_counter() - started
    return Summary(len(games), count_rows(games), skipped, seconds, config.out.stat().st_size)
