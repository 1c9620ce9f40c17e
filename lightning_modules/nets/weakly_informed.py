"""The weakly informed separation network (Schulze-Forster, Doire, Richard, Badeau, "Weakly
informed audio source separation", WASPAA 2019; spec ``weakly-informed.md`` 2.2, issue #14).

A mixture encoder (2-layer BLSTM over the mixture's magnitude frames), a side-information
encoder (the same over the side-information steps), Luong's "general" attention from every
mixture frame over every side-information step (paper eq. 3-5) and a target decoder (paper eq.
1-2: Linear + tanh, 2-layer BLSTM, Linear + ReLU) that outputs the target's magnitude directly.
Sizes follow the authors' public reference code (``schufo/wiass``): 513 units per LSTM
direction, so the encodings have 1026 features (the paper's E = J = 513 is the per-direction
size). ``side_info=False`` is the paper's baseline BL1: mixture encoder and decoder only.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn


def attention_weights(g: torch.Tensor, h: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    """alpha (B, N, M) = softmax over m of s_{n,m} = g_n^T W_s h_m (paper eq. 3-4) for a
    mixture encoding g (B, N, E), a side-information encoding h (B, M, J), W_s (E, J)."""
    return torch.softmax(g @ w_s @ h.transpose(1, 2), dim=-1)


class GeneralAttention(nn.Module):
    """Luong's "general" attention (paper eq. 3-5): returns the context c (B, N, J) = alpha h
    and the weights alpha (B, N, M). W_s is initialised U(-sqrt(1/J), sqrt(1/J))."""

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        bound = math.sqrt(1.0 / key_dim)
        self.w_s = nn.Parameter(torch.empty(query_dim, key_dim).uniform_(-bound, bound))

    def forward(self, g: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = attention_weights(g, h, self.w_s)
        return alpha @ h, alpha


class WeaklyInformedNet(nn.Module):
    """|X| (B, F, N) and side information Y (B, D, M) -> (|V_hat| (B, F, N), alpha (B, N, M)).

    Args:
        bins: F, frequency bins of the magnitudes (513 at the paper's STFT 1024 with DC).
        side_dim: D, features per side-information step (1 for every row of the paper).
        hidden: LSTM units per direction of every BLSTM (513).
        layers: BLSTM layers of the encoders and of the decoder (2).
        side_info: False for BL1 (no side-information encoder, no attention; ``forward`` then
            takes no side information and returns alpha = None).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        bins: int = 513,
        side_dim: int = 1,
        hidden: int = 513,
        layers: int = 2,
        side_info: bool = True,
    ) -> None:
        super().__init__()
        self.bins, self.side_dim, self.side_info = bins, side_dim, side_info
        encoding = 2 * hidden

        def blstm(inputs: int) -> nn.LSTM:
            return nn.LSTM(inputs, hidden, layers, batch_first=True, bidirectional=True)

        self.mixture_encoder = blstm(bins)
        if side_info:
            self.side_encoder = blstm(side_dim)
            self.attention = GeneralAttention(encoding, encoding)
        self.decoder_in = nn.Linear(2 * encoding if side_info else encoding, hidden)
        self.decoder = blstm(hidden)
        self.decoder_out = nn.Linear(encoding, bins)

    def forward(
        self, magnitude: torch.Tensor, side: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        g, _ = self.mixture_encoder(magnitude.transpose(1, 2))  # (B, N, 2 hidden)
        alpha = None
        if self.side_info:
            if side is None:
                raise ValueError("this network attends over side information: give `side`")
            h, _ = self.side_encoder(side.transpose(1, 2))  # (B, M, 2 hidden)
            c, alpha = self.attention(g, h)
            g = torch.cat([c, g], dim=-1)  # [c_n, g_n], paper eq. 1
        q1 = torch.tanh(self.decoder_in(g))
        q2, _ = self.decoder(q1)
        return torch.relu(self.decoder_out(q2)).transpose(1, 2), alpha
