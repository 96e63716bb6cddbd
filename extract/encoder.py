"""LXMERT over one question: loading (hub id or directory), target injection, batched encoding.

Inputs per question: the image's detector regions with the target injected into the last slot (its box from the
game, its features from the region with the highest IoU or from a per-object feature file), and `[CLS] q [SEP]`.
Outputs per question: LXMERT's `pooled_output` [H] and the `vision_output` row of the target slot [H].
A directory written by `pipeline finetune` also holds `oracle.json` (input settings) and `oracle_head.pt`
(3-way head and optional target marker); both are read here, so training and extraction cannot drift apart.

    encoder = Encoder.load("unc-nlp/lxmert-base-uncased", device="cpu")
    pooled, target_vision = encoder.encode([Example(question, visual)])
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from transformers import AutoTokenizer, LxmertModel

from extract.games import LABELS, Game
from extract.regions import ImageRegions, RegionError, open_h5
from extract.vision import vision_once

log = logging.getLogger(__name__)

SETTINGS_FILE = "oracle.json"
HEAD_FILE = "oracle_head.pt"


@dataclass(frozen=True)
class OracleSettings:
    """Input settings of an oracle directory; the defaults are what a plain pretrained LXMERT gets."""

    max_length: int = 32
    marker: str = "none"  # "none" | "offset": a learned vector added to the target slot's features
    head: str = "none"  # "none" | "linear" | "mlp"
    target_mode: str = "nearest"
    labels: tuple[str, ...] = field(default=LABELS)

    @classmethod
    def read(cls, directory: Path) -> OracleSettings:
        path = directory / SETTINGS_FILE
        if not path.is_file():
            return cls()
        values = json.loads(path.read_text())
        values["labels"] = tuple(values.get("labels", LABELS))
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def write(self, directory: Path) -> None:
        (directory / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class Visual:
    """LXMERT's vision input for one (image, target): features [K, D] and normalised x1y1x2y2 boxes [K, 4]."""

    features: np.ndarray
    boxes: np.ndarray


@dataclass(frozen=True)
class Example:
    question: str
    visual: Visual


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box with each row of `boxes` [K, 4]."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


class TargetFeatures:
    """Per-object target features: an HDF5 file with one [D] dataset per GuessWhat object id (the key)."""

    def __init__(self, path: Path) -> None:
        if not Path(path).is_file():
            raise RegionError(f"{path}: target feature file not found")
        self.path = Path(path)
        self._h5: h5py.File | None = None

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None:
            self._h5 = open_h5(self.path, "target feature file (one dataset per object id)")
        return self._h5

    def __contains__(self, object_id: int) -> bool:
        return str(object_id) in self.h5

    def size(self, object_id: int) -> int:
        return int(np.prod(self.h5[str(object_id)].shape))

    def __getitem__(self, object_id: int) -> np.ndarray:
        if object_id not in self:
            raise RegionError(f"{self.path}: no features for object {object_id}")
        return self.h5[str(object_id)][:].astype(np.float32).reshape(-1)


def inject_target(game: Game, regions: ImageRegions, target_features: TargetFeatures | None = None) -> Visual:
    """Regions with the target in the last slot; all boxes as (x1/W, y1/H, x2/W, y2/H) in [0, 1]."""
    scale = np.array([regions.width, regions.height, regions.width, regions.height], dtype=np.float32)
    boxes = np.clip(regions.boxes / scale, 0.0, 1.0)
    features = regions.features.copy()
    x, y, w, h = game.target.bbox
    target_pixels = np.array([x, y, x + w, y + h], dtype=np.float32)
    if target_features is None:
        features[-1] = regions.features[int(np.argmax(iou(target_pixels, regions.boxes)))]
    else:
        vector = target_features[game.target_id]
        if vector.shape[0] != features.shape[1]:
            raise RegionError(
                f"game {game.game_id}: target features of object {game.target_id} have size {vector.shape[0]}, "
                f"regions have {features.shape[1]}"
            )
        features[-1] = vector
    boxes[-1] = game.target_box_normalised()
    return Visual(features=features, boxes=boxes.astype(np.float32))


def load_lxmert(name_or_dir: str) -> tuple[LxmertModel, object, OracleSettings, dict]:
    """Model, tokenizer, settings and head/marker tensors ({} for a plain LXMERT) from a hub id or directory."""
    path_like = name_or_dir.startswith((".", "/", "~")) or name_or_dir.endswith("/") or name_or_dir.count("/") > 1
    if path_like and not Path(name_or_dir).expanduser().is_dir():  # not a hub id: do not ask the hub for it
        raise ValueError(f"{name_or_dir}: no such LXMERT directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
        model = LxmertModel.from_pretrained(name_or_dir)
    except OSError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{name_or_dir}: cannot load LXMERT ({first})") from None
    directory = Path(name_or_dir)
    settings = OracleSettings.read(directory) if directory.is_dir() else OracleSettings()
    extras = {}
    if directory.is_dir() and (directory / HEAD_FILE).is_file():
        extras = torch.load(directory / HEAD_FILE, map_location="cpu", weights_only=True)
    return model, tokenizer, settings, extras


def config_hash(model: LxmertModel) -> str:
    """The architecture, not where it was loaded from: the same oracle copied or moved keeps its hash."""
    config = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures"):
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_hash(model: LxmertModel, marker: torch.Tensor | None) -> str:
    """A fingerprint of the weights: the pooler (fine-tuning moves it) and the target marker, if any."""
    digest = hashlib.sha256()
    for tensor in (*model.pooler.parameters(), *([] if marker is None else [marker])):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def collate(examples: list[Example], tokenizer: object, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise and pad a batch; regions are padded to the largest K with a visual attention mask."""
    text = tokenizer(
        [e.question for e in examples],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    k = max(e.visual.features.shape[0] for e in examples)
    d = examples[0].visual.features.shape[1]
    features = torch.zeros(len(examples), k, d)
    boxes = torch.zeros(len(examples), k, 4)
    visual_mask = torch.zeros(len(examples), k, dtype=torch.long)
    target_slot = torch.empty(len(examples), dtype=torch.long)
    groups: dict[int, int] = {}  # one group per distinct Visual object (a game's questions share one)
    visual_group = torch.tensor([groups.setdefault(id(e.visual), len(groups)) for e in examples])
    for i, e in enumerate(examples):
        n = e.visual.features.shape[0]
        features[i, :n] = torch.from_numpy(e.visual.features)
        boxes[i, :n] = torch.from_numpy(e.visual.boxes)
        visual_mask[i, :n] = 1
        target_slot[i] = n - 1
    return {
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "token_type_ids": text.get("token_type_ids", torch.zeros_like(text["input_ids"])),
        "visual_feats": features,
        "visual_pos": boxes,
        "visual_attention_mask": visual_mask,
        "target_slot": target_slot,
        "visual_group": visual_group,
    }


def lxmert_forward(
    model: LxmertModel, batch: dict[str, torch.Tensor], marker: torch.Tensor | None = None, share_vision: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """pooled [B, H] and the target slot's vision output [B, H]; `marker` [D] is added to the target's features.

    `share_vision` (inference): the vision layers run once per distinct visual input (`extract.vision`)."""
    rows = torch.arange(batch["target_slot"].shape[0], device=batch["target_slot"].device)
    features = batch["visual_feats"]
    if marker is not None:
        features = features.clone()
        features[rows, batch["target_slot"]] += marker
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "token_type_ids": batch["token_type_ids"],
        "visual_feats": features,
        "visual_pos": batch["visual_pos"],
        "visual_attention_mask": batch["visual_attention_mask"],
    }
    if share_vision:
        mask, group = batch["visual_attention_mask"], batch["visual_group"]
        with vision_once(model.encoder, features, batch["visual_pos"], mask, group):
            out = model(**inputs)
    else:
        out = model(**inputs)
    return out.pooled_output, out.vision_output[rows, batch["target_slot"]]


def autocast_dtype(device: str, precision: str) -> torch.dtype | None:
    """None means plain fp32. CPU always runs fp32 (bf16 is slower than fp32 on our CPUs)."""
    if not device.startswith("cuda") or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Encoder:
    """A loaded LXMERT that turns examples into (pooled, target_vision) float32 arrays."""

    def __init__(
        self,
        model: LxmertModel,
        tokenizer: object,
        settings: OracleSettings,
        extras: dict,
        device: str = "cpu",
        precision: str = "auto",
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.settings = settings
        marker = extras.get("marker")
        self.marker = marker.to(device) if marker is not None else None
        self.device = device
        self.dtype = autocast_dtype(device, precision)

    @classmethod
    def load(cls, name_or_dir: str, device: str = "cpu", precision: str = "auto") -> Encoder:
        return cls(*load_lxmert(name_or_dir), device=device, precision=precision)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def visual_feat_dim(self) -> int:
        return int(self.model.config.visual_feat_dim)

    def describe(self, name_or_dir: str) -> dict:
        """Cache attrs naming this encoder."""
        import transformers

        return {
            "model": str(name_or_dir),
            "model_config_hash": config_hash(self.model),
            "model_weights_hash": weights_hash(self.model, self.marker),
            "transformers_version": transformers.__version__,
            "oracle_settings": json.dumps(asdict(self.settings)),
        }

    @torch.inference_mode()
    def encode(self, examples: list[Example], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Encode in batches; rows come back in the order given.

        Questions that share a visual input (a game's) stay together, so its vision layers run once; games
        are ordered by their longest question, so a batch pads its questions to similar lengths."""
        lengths = [len(self.tokenizer.tokenize(e.question)) for e in examples]
        first, longest = {}, {}  # per visual input: its first example, its longest question
        for i, (e, n) in enumerate(zip(examples, lengths, strict=True)):
            first.setdefault(id(e.visual), i)
            longest[id(e.visual)] = max(longest.get(id(e.visual), 0), n)
        order = sorted(
            range(len(examples)), key=lambda i: (longest[id(examples[i].visual)], first[id(examples[i].visual)], i)
        )
        pooled = np.empty((len(examples), self.hidden_size), dtype=np.float32)
        vision = np.empty_like(pooled)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = collate([examples[i] for i in index], self.tokenizer, self.settings.max_length)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype is not None):
                p, v = lxmert_forward(self.model, batch, self.marker, share_vision=True)
            pooled[index] = p.float().cpu().numpy()
            vision[index] = v.float().cpu().numpy()
        return pooled, vision


def save_random_lxmert(
    directory: Path, words: list[str], feature_size: int, hidden_size: int = 32, layers: int = 1, seed: int = 0
) -> Path:
    """A randomly initialised LXMERT whose tokenizer knows `words`, saved the transformers way (no download).

    For tests, benchmarks and the demo. The tokenizer is loaded from a written vocab.txt with
    `from_pretrained(directory)`: transformers 5 silently ignores `vocab_file=` and makes every word [UNK].
    """
    from transformers import BertTokenizer, LxmertConfig

    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words) - {"[PAD]", "[UNK]", "[CLS]", "[SEP]"})]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer.from_pretrained(directory).save_pretrained(directory)
    config = LxmertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_attention_heads=max(hidden_size // 16, 1),
        intermediate_size=hidden_size * 2,
        l_layers=layers,
        x_layers=layers,
        r_layers=layers,
        visual_feat_dim=feature_size,
        visual_pos_dim=4,
        # BERT's 0.02 leaves a random model's [CLS] (and so the pooled output) almost the same for every input,
        # and fine-tuning from there barely moves; 0.1 gives the pooled output a usable spread.
        initializer_range=0.1,
    )
    LxmertModel(config).save_pretrained(directory)
    return directory


def question_words(questions: list[str]) -> list[str]:
    """The lowercased words and punctuation marks of `questions`, as BERT's basic tokenizer splits them."""
    return sorted({w for q in questions for w in re.findall(r"\w+|[^\w\s]", q.lower())})
