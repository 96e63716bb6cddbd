"""The run directory: checkpoints written atomically as plain dicts, and loading a trained model back.

A run directory holds config.json, metrics.csv, best.pt, last.pt, train.log (and report.json after evaluate).
A checkpoint is `{"spec": OracleSpec dict, "state_dict": tensors, "epoch": int, "metrics": dict,
"schema_version": int, "feature_size": int, "cache_model": str}`; `torch.load(weights_only=True)` reads it.

    model, checkpoint = load_model(Path("runs/dialogue"), device="cpu")   # best.pt, in eval mode
    check_split(checkpoint, split)                                          # same schema and feature size
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from classify.data import SCHEMA_VERSION, Split
from classify.model import OracleSpec, build_model

log = logging.getLogger(__name__)

CACHE_IDENTITY = ("model", "model_config_hash", "model_weights_hash", "oracle_settings")
RUN_FILES = ("config.json", "metrics.csv", "best.pt", "last.pt", "train.log", "report.json")


def save_checkpoint(
    path: Path, model: nn.Module, epoch: int, metrics: dict, split: Split, training: dict | None = None
) -> None:
    """Write a plain-dict checkpoint to a temporary name, then rename it into place.

    `training` (last.pt only) is what `--resume` needs besides the weights: optimizer, RNG states, best so far."""
    checkpoint = {
        "spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "schema_version": SCHEMA_VERSION,
        "feature_size": split.feature_size,
        "cache_model": str(split.attrs.get("model", "")),
        # which oracle made the caches: predict refuses an oracle whose vectors would differ
        "cache_attrs": {k: str(split.attrs[k]) for k in CACHE_IDENTITY if k in split.attrs},
    }
    if training is not None:
        checkpoint["training"] = training
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def checkpoint_path(run: Path, which: str = "best") -> Path:
    """`run` may be a run directory (→ run/best.pt) or a checkpoint file."""
    run = Path(run)
    path = run / f"{which}.pt" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; is {run} a run directory made by `pipeline train`?")
    return path


def load_model(run: Path, device: torch.device | str = "cpu", which: str = "best") -> tuple[nn.Module, dict]:
    """A run's (or checkpoint file's) model in eval mode on `device`, and the checkpoint dict."""
    path = checkpoint_path(run, which)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(OracleSpec.from_dict(checkpoint["spec"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


def check_split(checkpoint: dict, split: Split, run: Path | str = "the run") -> None:
    """A cache can feed a trained model only with the same schema version and feature size."""
    categories = checkpoint["spec"].get("num_categories", 0)
    if checkpoint["spec"].get("target") and len(split.target_category) and split.target_category.max() >= categories:
        largest = int(split.target_category.max())
        log.warning(
            "%s: target categories up to %d, but %s knows ids below %d: larger ids share its last embedding",
            split.source,
            largest,
            run,
            categories,
        )
    if checkpoint["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"{run}: trained on cache schema {checkpoint['schema_version']}, this code reads "
            f"{SCHEMA_VERSION}; retrain it"
        )
    if checkpoint["feature_size"] != split.feature_size:
        raise ValueError(
            f"{split.source}: {split.feature_size}-d features, but {run} was trained on "
            f"{checkpoint['feature_size']}-d features ({checkpoint.get('cache_model') or 'unknown model'}); "
            "use a cache extracted with the same LXMERT"
        )


def check_run_dir(out: Path, overwrite: bool) -> list[str]:
    """Our files already in `out`; an error if there are some and `overwrite` is off."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a directory")
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"--out {out}: already holds a run ({', '.join(existing)}); pass --overwrite or choose another directory"
        )
    return existing


def clear_run_dir(out: Path, overwrite: bool) -> None:
    """Make `out` ready for a new run: error if it holds a run and not `overwrite`, else delete our files."""
    for name in check_run_dir(out, overwrite):  # only our own files: --out . --overwrite deletes nothing else
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
