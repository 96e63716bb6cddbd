"""LXMERT's vision encoder run once per distinct (image, target) in a batch, not once per question.

LXMERT's vision side (the visual projection and the relational layers) reads only the regions, never the
question, and every question of a GuessWhat game (5.2 on average) has the same regions and target. The prior
system ran it for each question. `vision_once` computes it for each distinct visual input of a batch, and
stands the result in for those modules while LXMERT's own forward runs the language and cross-modality layers:
the outputs are LXMERT's (a test holds them to 1e-5), and about a quarter of LXMERT base's compute is saved for
every question after a game's first. Inference only: training keeps the plain forward.

    with vision_once(model.encoder, features, boxes, mask, batch["visual_group"]):
        out = model(input_ids=..., visual_feats=features, ...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class _Given(nn.Module):
    """Stands in for `visn_fc`: returns the precomputed vision states whatever it is given."""

    def __init__(self, states: torch.Tensor) -> None:
        super().__init__()
        self.states = states

    def forward(self, *_: object) -> torch.Tensor:
        return self.states


@contextmanager
def vision_once(
    encoder: nn.Module, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor, group: torch.Tensor
) -> Iterator[None]:
    """Within the block, `encoder` (an LxmertEncoder) skips its vision layers and uses their output computed
    once per group. features [B, K, D], boxes [B, K, 4], mask [B, K]; group [B]: 0..U-1 in order of first row."""
    first = torch.zeros(int(group.max()) + 1, dtype=torch.long, device=group.device)
    first.scatter_reduce_(0, group, torch.arange(len(group), device=group.device), "amin", include_self=False)
    dtype = next(encoder.parameters()).dtype
    extended = (1.0 - mask[first][:, None, None, :].to(dtype)) * torch.finfo(dtype).min  # as LxmertModel makes it
    states = encoder.visn_fc(features[first], boxes[first])  # [U, K, H]
    for layer in encoder.r_layers:
        states = layer(states, extended)[0]
    visn_fc, r_layers = encoder.visn_fc, encoder.r_layers
    encoder.visn_fc, encoder.r_layers = _Given(states[group]), nn.ModuleList()
    try:
        yield
    finally:
        encoder.visn_fc, encoder.r_layers = visn_fc, r_layers
