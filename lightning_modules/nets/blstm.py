"""The BLSTM chimera network of Luo et al., "Deep clustering and conventional networks for
music separation: stronger together" (ICASSP 2017), Section 2.2 and 3.2 (spec chimera-blstm.md
B.2): a body of stacked bidirectional LSTMs, a linear layer giving ``Z_t`` (F x D per frame),
a deep clustering head ``V = unit-normalise(tanh(Z))`` per time-frequency bin (no parameters)
and a mask-inference head of F fully connected D -> C layers, one per frequency, each followed
by a softmax over the C sources.

A plain ``nn.Module``: no losses, no features, no training logic
(``lightning_modules.separators.blstm_chimera`` has those).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BLSTMChimeraNet"]


class BLSTMChimeraNet(nn.Module):
    """(B, n_inputs, T) features -> ``{"embedding": (B, D, F, T), "masks": (B, C, F, T)}``.

    Args:
        n_inputs: features per frame (150 Mel bins + their deltas = 300 in Tables 2-3; the
            Mel bins alone in Table 4).
        n_mels: F, the frequency bins the heads output (the Mel bins).
        hidden: LSTM units per direction (the paper's "500 hidden units", read as per
            direction: the top layer's output is N = 2 x hidden; spec ambiguity B-5).
        layers: stacked BLSTM layers (4).
        embedding_dim: D, the embedding dimension (20 in Table 2, 10 in Tables 3-4).
        n_sources: C, the sources the mask head separates (2: vocals, accompaniment).
        mask_head: False for a pure deep clustering network (alpha = 1): no mask-inference
            layer, the output has no "masks" (Table 2's DC row: 24,235,000 parameters).

    Layout: the embeddings and masks are (B, ., F, T), frequency before time, so that
    ``losses.flatten_embeddings`` and ``losses.dominant_source_labels`` order their rows the
    same way (bin (f, t) at row f * T + t). The mask head's bias is one per (f, c) (B-6); its
    weights are a (F, D, C) tensor applied with one einsum. Initialisation: PyTorch's defaults
    ("all networks are trained from random initialization").
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        n_inputs: int = 300,
        n_mels: int = 150,
        hidden: int = 500,
        layers: int = 4,
        embedding_dim: int = 20,
        n_sources: int = 2,
        mask_head: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("n_inputs", n_inputs),
            ("n_mels", n_mels),
            ("hidden", hidden),
            ("layers", layers),
            ("embedding_dim", embedding_dim),
            ("n_sources", n_sources),
        ):
            if value < 1:
                raise ValueError(f"BLSTMChimeraNet: {name} must be >= 1, got {value}")
        self.n_inputs = n_inputs
        self.n_mels = n_mels
        self.embedding_dim = embedding_dim
        self.n_sources = n_sources
        self.blstm = nn.LSTM(
            n_inputs, hidden, num_layers=layers, batch_first=True, bidirectional=True
        )
        self.z = nn.Linear(2 * hidden, n_mels * embedding_dim)
        if mask_head:
            # F separate D -> C layers, initialised as nn.Linear(D, C) would be
            bound = embedding_dim**-0.5
            self.mask_weight = nn.Parameter(
                torch.empty(n_mels, embedding_dim, n_sources).uniform_(-bound, bound)
            )
            self.mask_bias = nn.Parameter(torch.empty(n_mels, n_sources).uniform_(-bound, bound))
        else:
            self.register_parameter("mask_weight", None)
            self.register_parameter("mask_bias", None)

    @property
    def has_mask_head(self) -> bool:
        return self.mask_weight is not None

    def body(self, features: Tensor) -> Tensor:
        """Z: (B, n_inputs, T) -> (B, T, F, D), before the tanh."""
        if features.dim() != 3 or features.shape[1] != self.n_inputs:
            raise ValueError(
                f"BLSTMChimeraNet expects (batch, {self.n_inputs} features, frames), got "
                f"{tuple(features.shape)}"
            )
        hidden, _ = self.blstm(features.transpose(1, 2))  # (B, T, 2H)
        return self.z(hidden).unflatten(-1, (self.n_mels, self.embedding_dim))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        z = self.body(features)
        # DC head: tanh, then unit length per bin (Section 2.2)
        embedding = F.normalize(torch.tanh(z), dim=-1)
        out = {"embedding": embedding.permute(0, 3, 2, 1)}  # (B, D, F, T)
        if self.mask_weight is not None:
            logits = torch.einsum("btfd,fdc->btfc", z, self.mask_weight) + self.mask_bias
            out["masks"] = torch.softmax(logits, dim=-1).permute(0, 3, 2, 1)  # (B, C, F, T)
        return out

    def example_inputs(self, frames: int, bins: int, channels: int) -> tuple[Tensor]:
        """What ``make stats`` counts one forward pass on: (1, n_inputs, frames) features
        (the Mel bins and their deltas per frame), whatever the row's STFT bins."""
        return (torch.zeros(1, self.n_inputs, frames),)
