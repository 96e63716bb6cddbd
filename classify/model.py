"""Stage-two models: `DialogueOracle` (LSTM over a game's turns) and `TurnOracle` (single-turn baseline).

Both read a `Batch` and return logits, never probabilities: the loss (in train.py) applies the softmax itself.
Shapes: B games, T turns (padded), H cache feature size, D per-turn input size, K hidden size, 3 answers.

Per-turn input = pooled [H] (+ target_vision [H]) (+ target category embedding [CATEGORY_SIZE] and box [4])
(+ previous answer one-hot [4]: No, Yes, N/A, start; an unknown gold answer is all zeros).

    model = build_model(OracleSpec(kind="dialogue", feature_size=split.feature_size))
    logits = model(batch)                        # [B, T, 3], gold previous answers (teacher forcing)
    probs = answer_dialogues(model, batch)       # [B, T, 3], the model's own previous answers fed back
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from classify.data import NUM_CLASSES, PREVIOUS_START, Batch

CATEGORY_SIZE = 32  # target category embedding width
NUM_CATEGORIES = 91  # COCO category ids run 1..90; larger ids found in the training cache extend this
PREVIOUS_SIZE = 4  # one-hot width of the previous answer: No, Yes, N/A, start


@dataclass(frozen=True)
class OracleSpec:
    """Everything needed to rebuild a model; stored in every checkpoint as a plain dict."""

    kind: Literal["dialogue", "turn"]
    feature_size: int
    target_vision: bool = True
    answer_feedback: bool = True  # dialogue model only: previous answer one-hot in the input
    target: bool = True  # target category embedding and box
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.5
    skip: bool = True  # dialogue model: the output layer also sees the current turn's inputs (an MLP head)
    num_categories: int = NUM_CATEGORIES

    @property
    def uses_feedback(self) -> bool:
        return self.kind == "dialogue" and self.answer_feedback

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> OracleSpec:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def turn_mlp(size: int, spec: OracleSpec) -> nn.Sequential:
    """[..., D] one turn's inputs → [..., 3] logits: the single-turn baseline's classifier."""
    return nn.Sequential(
        nn.Linear(size, spec.hidden), nn.ReLU(), nn.Dropout(spec.dropout), nn.Linear(spec.hidden, NUM_CLASSES)
    )


class TurnInputs(nn.Module):
    """Concatenates the configured per-turn inputs into one vector [B, T, D]."""

    def __init__(self, spec: OracleSpec, feedback: bool) -> None:
        super().__init__()
        self.spec, self.feedback = spec, feedback
        self.category = nn.Embedding(spec.num_categories, CATEGORY_SIZE) if spec.target else None
        features = spec.feature_size * (2 if spec.target_vision else 1)
        # Per-dimension standardisation of the cached vectors, from the training split (see `standardize`):
        # LXMERT's pooled output varies little around a large per-dimension offset, which plain inputs hide.
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_std", torch.ones(features))
        self.single_size = features + ((CATEGORY_SIZE + 4) if spec.target else 0)  # all but the previous answer
        self.size = self.single_size + (PREVIOUS_SIZE if feedback else 0)

    def standardize(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the feature statistics (of pooled, then target_vision, concatenated) from the training split."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-4))

    def forward(self, batch: Batch, turns: slice, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs of `turns` ([B, T', D]); `previous` [B, T'] overrides the batch's gold previous answers.

        The previous-answer one-hot comes last, so `x[..., : self.single_size]` is the single-turn part.
        """
        features = [batch.pooled[:, turns]]
        if self.spec.target_vision:
            features.append(batch.target_vision[:, turns])
        parts = [(torch.cat(features, dim=-1) - self.feature_mean) / self.feature_std]
        steps = parts[0].shape[1]
        if self.category is not None:
            category = self.category(batch.category.clamp(0, self.spec.num_categories - 1))
            target = torch.cat([category, batch.box], dim=-1)  # [B, CATEGORY_SIZE + 4]
            parts.append(target[:, None, :].expand(-1, steps, -1))
        if self.feedback:
            codes = batch.previous[:, turns] if previous is None else previous
            # PREVIOUS_UNKNOWN is one-hot column 4, dropped: an unknown gold answer carries no information
            parts.append(F.one_hot(codes, PREVIOUS_SIZE + 1)[..., :PREVIOUS_SIZE].float())
        return torch.cat(parts, dim=-1)


class DialogueOracle(nn.Module):
    """Unidirectional LSTM over the turns of each game → dropout → Linear → 3 logits per turn.

    With `spec.skip` (the default) the logits also get the single-turn MLP of `TurnOracle` applied to the turn's
    own inputs (all but the previous answer): the LSTM carries the dialogue, and the single-turn evidence reaches
    the output as directly as in the baseline. `start_from` loads a trained `TurnOracle` into that branch and
    freezes it, so the LSTM learns only what the dialogue adds to the baseline.
    """

    def __init__(self, spec: OracleSpec) -> None:
        super().__init__()
        self.spec = spec
        self.inputs = TurnInputs(spec, feedback=spec.answer_feedback)
        self.lstm = nn.LSTM(
            self.inputs.size,
            spec.hidden,
            num_layers=spec.layers,
            batch_first=True,
            dropout=spec.dropout if spec.layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden, NUM_CLASSES)
        self.turn = turn_mlp(self.inputs.single_size, spec) if spec.skip else None

    def start_from(self, base: TurnOracle) -> None:
        """Copy a trained single-turn baseline into the skip branch (with its category embedding and input
        statistics) and freeze them; raises ValueError when the two models do not read the same inputs."""
        mine, theirs = self.spec, base.spec
        fields = ("feature_size", "target_vision", "target", "hidden", "num_categories")
        different = [
            f"{f} {getattr(theirs, f)} vs {getattr(mine, f)}" for f in fields if getattr(mine, f) != getattr(theirs, f)
        ]
        if theirs.kind != "turn" or not mine.skip or different:
            raise ValueError(
                "the base run must be a `--model turn` run with the same inputs and hidden size as this dialogue "
                f"model (base vs this: kind {theirs.kind}, {', '.join(different) or 'inputs match'})"
            )
        self.turn.load_state_dict(base.mlp.state_dict())
        self.inputs.load_state_dict(base.inputs.state_dict())
        for parameter in [*self.turn.parameters(), *self.inputs.parameters()]:
            parameter.requires_grad_(False)

    def _logits(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[..., K] LSTM outputs and [..., D] inputs → [..., 3]."""
        logits = self.head(self.dropout(output))
        return logits + self.turn(x[..., : self.inputs.single_size]) if self.turn is not None else logits

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits [B, T, 3] with gold previous answers (zeros at padding)."""
        x = self.inputs(batch, slice(None))  # [B, T, D]
        packed = pack_padded_sequence(self.dropout(x), batch.lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])  # [B, T, K]
        return self._logits(output, x)

    def step(
        self, batch: Batch, turn: int, previous: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One turn for every game: logits [B, 3] and the new LSTM state; `previous` [B] answer codes."""
        x = self.inputs(batch, slice(turn, turn + 1), previous[:, None])  # [B, 1, D]
        output, state = self.lstm(self.dropout(x), state)
        return self._logits(output[:, 0], x[:, 0]), state


class TurnOracle(nn.Module):
    """Single-turn baseline: the same per-turn inputs minus anything from other turns → MLP → 3 logits."""

    def __init__(self, spec: OracleSpec) -> None:
        super().__init__()
        self.spec = spec
        self.inputs = TurnInputs(spec, feedback=False)
        self.mlp = turn_mlp(self.inputs.size, spec)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits [B, T, 3] (padding rows get logits too; the loss ignores them)."""
        return self.mlp(self.inputs(batch, slice(None)))


def build_model(spec: OracleSpec) -> DialogueOracle | TurnOracle:
    if spec.kind == "dialogue":
        return DialogueOracle(spec)
    if spec.kind == "turn":
        return TurnOracle(spec)
    raise ValueError(f"unknown model kind {spec.kind!r}; expected 'dialogue' or 'turn'")


@torch.no_grad()
def answer_dialogues(model: nn.Module, batch: Batch, history: Literal["own", "gold"] = "own") -> torch.Tensor:
    """Answer probabilities [B, T, 3], in eval mode.

    history="own": each turn sees the model's own answer to the turn before (how new games are answered);
    history="gold": each turn sees the gold previous answer (teacher forcing). The two agree for models
    without answer feedback.
    """
    was_training = model.training
    model.eval()
    try:
        if history == "gold" or not model.spec.uses_feedback:
            return model(batch).softmax(dim=-1)
        steps, state = [], None
        previous = torch.full_like(batch.lengths, PREVIOUS_START, device=batch.pooled.device)
        for turn in range(batch.pooled.shape[1]):
            logits, state = model.step(batch, turn, previous, state)
            steps.append(logits.softmax(dim=-1))
            previous = logits.argmax(dim=-1)
        return torch.stack(steps, dim=1)
    finally:
        model.train(was_training)
