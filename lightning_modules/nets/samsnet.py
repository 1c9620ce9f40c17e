"""Sams-Net (Li, Chen, Hou, Li: "Sams-Net: A Sliced Attention-based Neural Network for Music
Source Separation"): sliced multi-head attention over the frames of a magnitude spectrogram.

What the paper's text fixes (section 3 and 4.1) and what is read into it (spec
``samsnet.md`` 1.2 and 1.6; the figures are not in the text):

- embedding: one 3x3 conv of the (B, C_in, F, T) magnitudes into ``channels`` = d_k = 64
  feature maps (paper 3.1);
- three Sliced Attention modules (paper 4.1: "3 Sliced Attention modules with 2 heads and 64
  channel dimensions"), each two sub-layers with ``LayerNorm(x + Sublayer(x))`` (eq. 12):

  1. sliced multi-head attention: Q, K, V by three 1x1 convs (3.1), per head W_j^Q, W_j^K,
     W_j^V 1x1 convs (eq. 6; 64 maps per head, read), the frames cut into ``slices``
     consecutive groups (eq. 7, ``torch.tensor_split`` sizes), scaled dot-product attention
     between the frames of one slice only (eq. 5 and 8; a token is one frame, its vector the
     frame's 64 x F values, scale 1/sqrt(64)), the heads concatenated and compressed by W^O, a
     3x3 conv (eq. 6). W^O belongs to MultiHead, and eq. 8 applies MultiHead to each slice
     (``slice_i = MultiHead(Q_i, K_i, V_i)``), so W^O runs on each slice on its own, zero
     padded at the slice's edges, and the slices are concatenated after it (eq. 9): a slice's
     output depends on that slice's frames only;
  2. depthwise separable conv (3.4): depthwise 3x3, ReLU (read), pointwise 1x1;

  the LayerNorm normalises each frame over its (64, F) values, with affine parameters (read);
- output: a 1x1 conv to ``out_channels`` masks and ReLU (read; Open-Unmix's mask function),
  target-major (target n, channel c at map n x C + c) as ``SpectrogramSeparator(multi_target)``
  reads them.

Slicing is a reshape: the parameter count does not depend on ``slices``. At F = 2049 bins the
default net has 349,832 + 768 F = 1,923,464 parameters (1,573,632 of them in the six LayerNorms);
the paper prints 3.70M.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUTPUT_ACTIVATIONS = ("relu", "sigmoid")


def slice_sizes(frames: int, slices: int) -> list[int]:
    """Frames per slice, as ``torch.tensor_split`` cuts ``frames`` into ``slices`` groups: the
    first ``frames % slices`` slices have one frame more (256 frames, 12 slices: 4 x 22, 8 x 21)."""
    if not 1 <= slices <= frames:
        raise ValueError(
            f"{slices} slices of {frames} frames: every slice needs at least one frame "
            "(model.init_args.net.init_args.slices <= data.context_frames)"
        )
    size, longer = divmod(frames, slices)
    return [size + 1] * longer + [size] * (slices - longer)


def _groups(frames: int, slices: int) -> list[tuple[int, int, int]]:
    """(first frame, slice length, number of slices) of the (at most two) runs of equal-length
    slices of ``slice_sizes``: each run is attended as one batch of slices."""
    size, longer = divmod(frames, slices)
    runs = [(0, size + 1, longer), (longer * (size + 1), size, slices - longer)]
    return [run for run in runs if run[2] > 0]


def _tokens(x: Tensor, start: int, length: int, count: int) -> Tensor:
    """(..., C, F, T) -> (..., count, length, C x F): ``count`` slices of ``length`` frames
    from ``start``, one token per frame holding its C x F values."""
    part = x[..., start : start + length * count]
    part = part.unflatten(-1, (count, length))  # (..., C, F, count, length)
    return part.movedim((-2, -1), (-4, -3)).flatten(-2)  # (..., count, length, C x F)


def _untokens(tokens: Tensor, channels: int, bins: int) -> Tensor:
    """The inverse of ``_tokens``: (..., count, length, C x F) -> (..., C, F, count x length)."""
    x = tokens.unflatten(-1, (channels, bins)).movedim((-4, -3), (-2, -1))
    return x.flatten(-2)


def sliced_attention(q: Tensor, k: Tensor, v: Tensor, slices: int, scale: float) -> Tensor:
    """Scaled dot-product attention between the frames of each slice (eq. 5, 7-9).

    ``q``, ``k``, ``v``: (..., C, F, T). The T frames are cut into ``slices`` consecutive groups
    (``slice_sizes``); inside a slice, frame t's output is the softmax(q_t . k_s x ``scale``)
    weighted sum of the slice's frames' values, q_t the frame's C x F values flattened. Returns
    (..., C, F, T). Uses ``torch.nn.functional.scaled_dot_product_attention``, once per run of
    equal-length slices."""
    channels, bins, frames = q.shape[-3:]
    slice_sizes(frames, slices)  # checks
    out = []
    for start, length, count in _groups(frames, slices):
        qs, ks, vs = (_tokens(x, start, length, count) for x in (q, k, v))
        attended = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        out.append(_untokens(attended, channels, bins))
    return torch.cat(out, dim=-1)


def sliced_attention_weights(q: Tensor, k: Tensor, slices: int, scale: float) -> list[Tensor]:
    """The attention weights of ``sliced_attention``, one (..., L_s, L_s) block per slice (rows:
    query frames, columns: key frames of the same slice), computed explicitly for inspection."""
    weights = []
    for qs, ks in zip(q.tensor_split(slices, dim=-1), k.tensor_split(slices, dim=-1), strict=True):
        qt, kt = (x.flatten(-3, -2).transpose(-2, -1) for x in (qs, ks))  # (..., L, C x F)
        weights.append(torch.softmax(qt @ kt.transpose(-2, -1) * scale, dim=-1))
    return weights


class FrameLayerNorm(nn.Module):
    """LayerNorm of every frame over its (C, F) values, with affine parameters of shape (C, F)
    (the Transformer normalises each token; a token is a frame). (B, C, F, T) -> same."""

    def __init__(self, channels: int, bins: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm((channels, bins))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(-1, -3)).movedim(-3, -1)


class SlicedMultiHeadAttention(nn.Module):
    """Sub-layer 1 of a Sliced Attention module (paper 3.1-3.3): Q, K, V 1x1 convs, per-head
    1x1 projections (all heads in one conv: the same weights as one conv per head), attention
    within each slice, W^O (3x3 conv, ``heads x channels`` -> ``channels``) on each slice.
    (B, C, F, T) -> (B, C, F, T)."""

    def __init__(self, channels: int = 64, heads: int = 2, slices: int = 1) -> None:
        super().__init__()
        self.channels, self.heads, self.slices = channels, heads, slices
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.head_query = nn.Conv2d(channels, heads * channels, 1)
        self.head_key = nn.Conv2d(channels, heads * channels, 1)
        self.head_value = nn.Conv2d(channels, heads * channels, 1)
        self.out = nn.Conv2d(heads * channels, channels, 3, padding=1)
        self.scale = channels**-0.5  # 1 / sqrt(d_k), d_k = the number of feature maps (eq. 5)

    def projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every head's query, key and value, each (B, heads, C, F, T)."""

        def heads(conv: nn.Conv2d, first: nn.Conv2d) -> Tensor:
            return conv(first(x)).unflatten(1, (self.heads, self.channels))

        return (
            heads(self.head_query, self.query),
            heads(self.head_key, self.key),
            heads(self.head_value, self.value),
        )

    def attention(self, x: Tensor) -> Tensor:
        """The heads' attention outputs before W^O, concatenated along channels (B, H x C, F, T)."""
        q, k, v = self.projections(x)
        return sliced_attention(q, k, v, self.slices, self.scale).flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        heads = self.attention(x)
        return torch.cat([self.out(s) for s in heads.tensor_split(self.slices, dim=-1)], dim=-1)


class DepthwiseSeparableConv(nn.Module):
    """Sub-layer 2 (paper 3.4): depthwise 3x3 conv, ReLU, pointwise 1x1 conv."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(F.relu(self.depthwise(x)))


class SlicedAttentionModule(nn.Module):
    """One Sliced Attention module: both sub-layers, each ``LayerNorm(x + Sublayer(x))``."""

    def __init__(self, channels: int, bins: int, heads: int, slices: int) -> None:
        super().__init__()
        self.attention = SlicedMultiHeadAttention(channels, heads, slices)
        self.norm1 = FrameLayerNorm(channels, bins)
        self.separable = DepthwiseSeparableConv(channels)
        self.norm2 = FrameLayerNorm(channels, bins)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.separable(x))


class SamsNet(nn.Module):
    """Sams-Net: (B, in_channels, F, T) mixture magnitudes -> (B, out_channels, F, T) masks.

    Args:
        in_channels: channels of the mixture (2: stereo, the paper).
        out_channels: masks, targets x channels, target-major (8: four stereo sources).
        bins: frequency bins F of the input (2049: STFT 4096 with its DC bin); the per-frame
            LayerNorms have (channels, F) affine parameters, so the net is built for one F.
        channels: feature maps d_k (64).
        heads: attention heads per module (2).
        attention_modules: Sliced Attention modules (3).
        slices: time slices of the attention (Table 2: 1 to 24); changes no parameter.
        output_activation: the mask function, "relu" (default) or "sigmoid".
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 8,
        bins: int = 2049,
        channels: int = 64,
        heads: int = 2,
        attention_modules: int = 3,
        slices: int = 1,
        output_activation: str = "relu",
    ) -> None:
        super().__init__()
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}"
            )
        if slices < 1 or heads < 1 or attention_modules < 1:
            raise ValueError(
                f"slices, heads and attention_modules must be >= 1, got {slices}, {heads}, "
                f"{attention_modules}"
            )
        self.in_channels, self.out_channels, self.bins = in_channels, out_channels, bins
        self.slices = slices
        self.output_activation = output_activation
        self.embedding = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            SlicedAttentionModule(channels, bins, heads, slices) for _ in range(attention_modules)
        )
        self.output = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-3:-1] != (self.in_channels, self.bins):
            raise ValueError(
                f"SamsNet was built for {self.in_channels} channel(s) x {self.bins} bins "
                f"(model.init_args.net.init_args in_channels, bins), got an input of shape "
                f"{tuple(x.shape)}: bins must be data.stft's (n_fft // 2 + 1 with keep_dc)"
            )
        x = self.embedding(x)
        for block in self.blocks:
            x = block(x)
        x = self.output(x)
        return torch.sigmoid(x) if self.output_activation == "sigmoid" else F.relu(x)
