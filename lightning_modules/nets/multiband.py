"""Multi-band dense blocks (MBDB-1..7) and multi-band channels (MBC) of thesis Section 4.4.

The thesis's block diagrams (Figs. 4.6, 4.7) are not in its text and Tables 4.8/4.9 are
garbled, so these networks build the readings proposed in
``../shared/specs/thesis-multiband-phase.md`` (sections 2.1-2.3, ambiguities A1-A11, B1-B3):

* ``MultiBandDenseNet`` is one U-Net of dense blocks, like ``MDenseNet``, carrying one
  full-size tensor between blocks (A1); only its input layer (``MultiBandInput``, A7) and its
  dense blocks are multi-band: ``MultiBandDenseBlock`` (one ``MultiBandDenseLayer``, the
  "multi-band unit" of Fig. 4.7, per layer; MBDB-1..4) or ``BandChainBlock`` (own dense chains
  per band sharing maps only at the block's input/output; MBDB-5..7, A5).
* Band geometry (A6): at a scale with ``F`` bins a limit of ``f`` Hz is bin
  ``round(f / nyquist * F)``; an interior edge ``e`` gets ``round(e * overlap)`` overlapping
  bins on each side, over which the lower band's weight falls linearly and the upper band's
  rises (they sum to 1 in every bin). ``band_slices`` and ``join_bands`` are that geometry.
* ``BandChannelDenseNet`` (MBC, B1/B2): the bands stacked as channels into an ``MDenseNet``
  whose last dense block is moved behind a 3x3 "assignment" conv that re-assembles the bands
  along frequency.

Conventions of the baseline (thesis 3.2.1): BN -> ReLU -> 3x3 conv without bias, biased input
and output convs, bias-free 1x1 convs (a BatchNorm follows, A9), Kaiming-normal init. The
pieces (``DenseBlock``, ``DenseLayer``, ``Downsample``, ``Upsample``, ``MDenseNet``) are the
baseline's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.mmdensenet import (
    DenseBlock,
    DenseLayer,
    Downsample,
    MDenseNet,
    Upsample,
    apply_output_activation,
    check_output_activation,
    kaiming_init_,
)

#: Nyquist frequency of the thesis's 32 kHz signals: the top of the full band.
NYQUIST_HZ = 16000.0


@dataclass(frozen=True)
class Band:
    """One band-limited path of a multi-band block: ``[low_hz, high_hz)``, its growth rate,
    its layer count (``BandChainBlock`` only) and its input-layer kernels (scale 1 only)."""

    low_hz: float
    high_hz: float
    growth_rate: int
    layers: int | None = None
    input_kernels: int | None = None


@dataclass(frozen=True)
class MultiBandBlockConfig:
    """The dense block of one scale (thesis Table 4.8, one row; encoder and decoder alike).

    ``bands`` empty: a plain full-band ``DenseBlock(full_growth_rate, layers)``.
    ``shared_internal`` set: a ``MultiBandDenseBlock`` of ``layers`` multi-band units sharing
    that many bottleneck-compressed (BC) maps, with optional ``shared_output`` maps into a
    ``forced_output`` full-band layer (MBDB-1..4). Otherwise a ``BandChainBlock``: per band a
    chain of ``Band.layers`` layers, the full band ``full_layers``, sharing ``shared_input``
    and/or ``shared_output`` maps (MBDB-5..7). ``overlap``: the factor of the overlapping bins.
    ``full_input_kernels``: the full band's input-layer kernels (scale 1 only).
    """

    bands: tuple[Band, ...] = ()
    full_growth_rate: int = 6
    layers: int | None = None
    full_layers: int | None = None
    full_input_kernels: int | None = None
    overlap: float = 0.0
    shared_input: int | None = None
    shared_internal: int | None = None
    shared_output: int | None = None
    forced_output: int | None = None


def _round(x: float) -> int:
    """Round half up (the thesis's sizes never hit a .5; Python's round would go to even)."""
    return int(math.floor(x + 0.5))


class BandSlice(NamedTuple):
    """Bins ``[start, stop)`` of one band and the widths of its cross-fades: its weight rises
    over its first ``fade_in`` bins and falls over its last ``fade_out`` bins (0: none)."""

    start: int
    stop: int
    fade_in: int = 0
    fade_out: int = 0

    def weight(
        self, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> Tensor:
        """The band's weight per bin of ``[start, stop)``: ``(j + 0.5) / fade_in`` rising,
        1, then ``1 - (j + 0.5) / fade_out`` falling."""
        parts = []
        if self.fade_in:
            parts.append(
                (torch.arange(self.fade_in, dtype=dtype, device=device) + 0.5) / self.fade_in
            )
        flat = self.stop - self.start - self.fade_in - self.fade_out
        parts.append(torch.ones(flat, dtype=dtype, device=device))
        if self.fade_out:
            ramp = (torch.arange(self.fade_out, dtype=dtype, device=device) + 0.5) / self.fade_out
            parts.append(1 - ramp)
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def band_slices(
    bands: Sequence[tuple[float, float]],
    n_bins: int,
    overlap: float = 0.0,
    nyquist_hz: float = NYQUIST_HZ,
) -> list[BandSlice]:
    """One ``BandSlice`` per band at a scale of ``n_bins`` bins (spec A6).

    ``bands``: ``(low_hz, high_hz)`` pairs that tile ``[0, nyquist_hz]`` in order. Edge of a
    limit ``f``: ``round(f / nyquist_hz * n_bins)``; an interior edge ``e`` overlaps
    ``o = round(e * overlap)`` bins on either side: the lower band ends at ``e + o``, the upper
    one starts at ``e - o``, and over those ``2o`` bins the lower band's weight falls as
    ``1 - (j + 0.5) / 2o`` and the upper band's rises as ``(j + 0.5) / 2o``, so the weights
    sum to 1 in every bin.
    """
    if not bands:
        raise ValueError("band_slices needs at least one band")
    if bands[0][0] != 0 or bands[-1][1] != nyquist_hz:
        raise ValueError(f"bands {list(bands)} must tile [0, {nyquist_hz}] Hz")
    for (_, high), (low, _) in zip(bands[:-1], bands[1:], strict=True):
        if high != low:
            raise ValueError(f"bands {list(bands)} must be contiguous (no gap or overlap in Hz)")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    edges = [_round(low / nyquist_hz * n_bins) for low, _ in bands] + [n_bins]
    overlaps = [0] + [_round(e * overlap) for e in edges[1:-1]] + [0]
    for i, (low, high) in enumerate(bands):
        if edges[i + 1] <= edges[i]:
            raise ValueError(f"band {low}-{high} Hz has no bin at {n_bins} bins")
        if edges[i] + overlaps[i] > edges[i + 1] - overlaps[i + 1]:
            raise ValueError(
                f"the overlaps of band {low}-{high} Hz at {n_bins} bins (overlap {overlap}) "
                "cross each other"
            )
    return [
        BandSlice(
            edges[i] - overlaps[i],
            edges[i + 1] + overlaps[i + 1],
            2 * overlaps[i],
            2 * overlaps[i + 1],
        )
        for i in range(len(bands))
    ]


def join_bands(maps: Sequence[Tensor], slices: Sequence[BandSlice], n_bins: int) -> Tensor:
    """Band maps ``(B, C_b, stop - start, T)`` joined along frequency into one
    ``(B, max C_b, n_bins, T)`` tensor: channels zero-padded to the largest band's count (the
    baseline's band join, thesis 3.2.1), each band weighted by its cross-fade, then summed.
    The weights are element-wise (no MACs counted)."""
    channels = max(m.shape[1] for m in maps)
    out = None
    for m, s in zip(maps, slices, strict=True):
        if s.fade_in or s.fade_out:
            m = m * s.weight(m.dtype, m.device)[:, None]
        m = F.pad(m, (0, 0, s.start, n_bins - s.stop, 0, channels - m.shape[1]))
        out = m if out is None else out + m
    assert out is not None
    return out


class _BandGeometry(nn.Module):
    """What every multi-band module needs: its bands' limits, the overlap and the Nyquist."""

    def __init__(self, bands: Sequence[Band], overlap: float, nyquist_hz: float) -> None:
        super().__init__()
        self.limits = tuple((b.low_hz, b.high_hz) for b in bands)
        self.overlap = overlap
        self.nyquist_hz = nyquist_hz

    def slices(self, n_bins: int) -> list[BandSlice]:
        return band_slices(self.limits, n_bins, self.overlap, self.nyquist_hz)


class MultiBandInput(_BandGeometry):
    """Input layer at scale 1 (spec A7): a biased 3x3 conv per band on the band's bins and one
    on the full band; the band maps joined along frequency, then concatenated in channels with
    the full-band maps (``max(band kernels) + full kernels`` maps)."""

    def __init__(
        self,
        in_channels: int,
        bands: Sequence[Band],
        full_kernels: int,
        overlap: float = 0.0,
        nyquist_hz: float = NYQUIST_HZ,
    ) -> None:
        super().__init__(bands, overlap, nyquist_hz)
        kernels = [b.input_kernels for b in bands]
        if any(k is None for k in kernels):
            raise ValueError("every band of the first scale needs input_kernels")
        self.band_convs = nn.ModuleList(
            nn.Conv2d(in_channels, k, kernel_size=3, padding=1, bias=True) for k in kernels
        )
        self.full_conv = nn.Conv2d(in_channels, full_kernels, kernel_size=3, padding=1, bias=True)
        self.out_channels = max(kernels) + full_kernels

    def forward(self, x: Tensor) -> Tensor:
        n_bins = x.shape[-2]
        slices = self.slices(n_bins)
        bands = [
            conv(x[..., a:b, :]) for conv, (a, b, _, _) in zip(self.band_convs, slices, strict=True)
        ]
        return torch.cat([join_bands(bands, slices, n_bins), self.full_conv(x)], dim=1)


class MultiBandDenseLayer(_BandGeometry):
    """One multi-band unit of thesis Fig. 4.7 (spec 2.1, A2).

    Per band ``b``: ``y_b = conv3x3(relu(bn(H[band bins])))`` (``k_b`` maps), compressed by a
    bias-free 1x1 conv to ``shared`` maps and joined along frequency (``z``). Full band:
    ``y_f = conv3x3(relu(bn(cat[H, z])))`` (``k_full`` maps). ``forward`` returns
    ``(cat[join(y_b), y_f], [y_b])``: the unit's output (``max k_b + k_full`` maps) and the
    band outputs (for a block's output sharing).
    """

    def __init__(
        self,
        in_channels: int,
        bands: Sequence[Band],
        full_growth_rate: int,
        shared: int,
        overlap: float = 0.0,
        nyquist_hz: float = NYQUIST_HZ,
    ) -> None:
        super().__init__(bands, overlap, nyquist_hz)
        self.band_layers = nn.ModuleList(DenseLayer(in_channels, b.growth_rate) for b in bands)
        self.compress = nn.ModuleList(
            nn.Conv2d(b.growth_rate, shared, kernel_size=1, bias=False) for b in bands
        )
        self.full_layer = DenseLayer(in_channels + shared, full_growth_rate)
        self.out_channels = max(b.growth_rate for b in bands) + full_growth_rate

    def forward(self, h: Tensor) -> tuple[Tensor, list[Tensor]]:
        n_bins = h.shape[-2]
        slices = self.slices(n_bins)
        ys = [
            layer(h[..., a:b, :])
            for layer, (a, b, _, _) in zip(self.band_layers, slices, strict=True)
        ]
        z = join_bands([bc(y) for bc, y in zip(self.compress, ys, strict=True)], slices, n_bins)
        y_full = self.full_layer(torch.cat([h, z], dim=1))
        return torch.cat([join_bands(ys, slices, n_bins), y_full], dim=1), ys


class MultiBandDenseBlock(_BandGeometry):
    """Dense block of multi-band units sharing maps at every layer (MBDB-1..4).

    Unit ``i`` sees the block input and every previous unit's output. Without a forced output
    the block returns the last unit's output (as the baseline's block returns its last layer);
    with one (spec A3/A4) the last unit's band outputs are compressed by per-band 1x1 convs to
    ``shared_output`` maps, joined, and one more full-band composite function over every map of
    the block (input, all unit outputs, those maps) gives ``forced_output`` maps.
    """

    def __init__(
        self, in_channels: int, config: MultiBandBlockConfig, nyquist_hz: float = NYQUIST_HZ
    ) -> None:
        super().__init__(config.bands, config.overlap, nyquist_hz)
        if config.layers is None or config.shared_internal is None:
            raise ValueError("a multi-band dense block needs layers and shared_internal")
        if (config.shared_output is None) != (config.forced_output is None):
            raise ValueError("shared_output and forced_output go together in a multi-band block")
        self.units = nn.ModuleList()
        channels = in_channels
        for _ in range(config.layers):
            unit = MultiBandDenseLayer(
                channels,
                config.bands,
                config.full_growth_rate,
                config.shared_internal,
                config.overlap,
                nyquist_hz,
            )
            self.units.append(unit)
            channels += unit.out_channels
        self.output_compress: nn.ModuleList | None = None
        self.forced: DenseLayer | None = None
        self.out_channels = self.units[-1].out_channels
        if config.forced_output is not None:
            assert config.shared_output is not None
            self.output_compress = nn.ModuleList(
                nn.Conv2d(b.growth_rate, config.shared_output, kernel_size=1, bias=False)
                for b in config.bands
            )
            self.forced = DenseLayer(channels + config.shared_output, config.forced_output)
            self.out_channels = config.forced_output

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        out, ys = x, []
        for unit in self.units:
            out, ys = unit(torch.cat(features, dim=1) if len(features) > 1 else x)
            features.append(out)
        if self.forced is None or self.output_compress is None:
            return out
        n_bins = x.shape[-2]
        shared = join_bands(
            [bc(y) for bc, y in zip(self.output_compress, ys, strict=True)],
            self.slices(n_bins),
            n_bins,
        )
        return self.forced(torch.cat([*features, shared], dim=1))


class BandChainBlock(_BandGeometry):
    """Dense block sharing maps only at its input and/or output (MBDB-5..7, spec A5).

    Per band an own ``DenseBlock`` (``Band.layers``, ``Band.growth_rate``) on the band's bins
    of the block input ``X``; input sharing: per-band bias-free 1x1 convs of ``X[band bins]``
    to ``shared_input`` maps, joined, concatenated to ``X`` for the full band's ``DenseBlock``
    (``full_layers``, ``full_growth_rate``). Output: ``cat[join(1x1_b(y_b)), y_full]`` with
    output sharing, else ``cat[join(y_b), y_full]``.
    """

    def __init__(
        self, in_channels: int, config: MultiBandBlockConfig, nyquist_hz: float = NYQUIST_HZ
    ) -> None:
        super().__init__(config.bands, config.overlap, nyquist_hz)
        if config.full_layers is None or any(b.layers is None for b in config.bands):
            raise ValueError("a band-chain block needs layers for every band and full_layers")
        if config.forced_output is not None:
            raise ValueError("forced_output needs shared_internal (a multi-band dense block)")
        self.chains = nn.ModuleList(
            DenseBlock(in_channels, b.growth_rate, b.layers or 0) for b in config.bands
        )
        self.input_compress: nn.ModuleList | None = None
        shared_in = config.shared_input or 0
        if config.shared_input:
            self.input_compress = nn.ModuleList(
                nn.Conv2d(in_channels, shared_in, kernel_size=1, bias=False) for _ in config.bands
            )
        self.full_chain = DenseBlock(
            in_channels + shared_in, config.full_growth_rate, config.full_layers
        )
        self.output_compress: nn.ModuleList | None = None
        if config.shared_output:
            self.output_compress = nn.ModuleList(
                nn.Conv2d(b.growth_rate, config.shared_output, kernel_size=1, bias=False)
                for b in config.bands
            )
            band_out = config.shared_output
        else:
            band_out = max(b.growth_rate for b in config.bands)
        self.out_channels = band_out + config.full_growth_rate

    def forward(self, x: Tensor) -> Tensor:
        n_bins = x.shape[-2]
        slices = self.slices(n_bins)
        parts = [x[..., s.start : s.stop, :] for s in slices]
        full_in = x
        if self.input_compress is not None:
            shared = join_bands(
                [c(p) for c, p in zip(self.input_compress, parts, strict=True)], slices, n_bins
            )
            full_in = torch.cat([x, shared], dim=1)
        ys = [chain(p) for chain, p in zip(self.chains, parts, strict=True)]
        if self.output_compress is not None:
            ys = [c(y) for c, y in zip(self.output_compress, ys, strict=True)]
        return torch.cat([join_bands(ys, slices, n_bins), self.full_chain(full_in)], dim=1)


def build_block(
    in_channels: int, config: MultiBandBlockConfig, nyquist_hz: float = NYQUIST_HZ
) -> nn.Module:
    """The dense block a scale's configuration describes (see ``MultiBandBlockConfig``)."""
    if not config.bands:
        if config.layers is None:
            raise ValueError("a full-band block needs layers")
        return DenseBlock(in_channels, config.full_growth_rate, config.layers)
    if config.shared_internal is not None:
        return MultiBandDenseBlock(in_channels, config, nyquist_hz)
    return BandChainBlock(in_channels, config, nyquist_hz)


def _as_config(config: MultiBandBlockConfig | dict) -> MultiBandBlockConfig:
    """A scale's configuration from its dataclass or its YAML mapping."""
    if isinstance(config, MultiBandBlockConfig):
        return config
    fields = dict(config)
    fields["bands"] = tuple(
        b if isinstance(b, Band) else Band(**b) for b in fields.get("bands", ())
    )
    return MultiBandBlockConfig(**fields)


class MultiBandDenseNet(nn.Module):
    """U-Net of multi-band dense blocks (MBDB, thesis 4.4.2, Table 4.8; spec 2.1).

    ``scales``: one ``MultiBandBlockConfig`` per resolution, finest first, the last one the
    bottleneck (thesis: 1, 1/2, 1/4, 1/8); the decoder mirrors the encoder ("built
    symmetrically"), its block at a resolution built from the same configuration on
    ``[upsampled, skip]``. Input ``(B, in_channels, F, T)``: ``F`` must be divisible by
    ``2 ** (len(scales) - 1)`` (band edges depend on it); ``T`` is zero-padded to such a
    multiple and the output cropped back, like ``MDenseNet``. After the U-Net: a
    ``DenseBlock(final_growth_rate, final_layers)`` (the output block), a biased 1x1 output
    conv and the output activation.
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        scales: Sequence[MultiBandBlockConfig],
        final_growth_rate: int = 4,
        final_layers: int = 2,
        output_activation: str = "relu",
        in_channels: int = 1,
        out_channels: int = 1,
        downsample_conv: bool = True,
        nyquist_hz: float = NYQUIST_HZ,
    ) -> None:
        super().__init__()
        check_output_activation(output_activation)
        configs = [_as_config(c) for c in scales]
        if len(configs) < 2:
            raise ValueError("scales needs at least one encoder scale and the bottleneck")
        self.output_activation = output_activation
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scales = len(configs) - 1
        first = configs[0]
        if first.full_input_kernels is None:
            raise ValueError("the first scale needs full_input_kernels")
        if first.bands:
            self.input_layer: nn.Module = MultiBandInput(
                in_channels, first.bands, first.full_input_kernels, first.overlap, nyquist_hz
            )
            channels = self.input_layer.out_channels
        else:
            self.input_layer = nn.Conv2d(
                in_channels, first.full_input_kernels, kernel_size=3, padding=1, bias=True
            )
            channels = first.full_input_kernels

        self.encoder = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skips: list[int] = []
        for config in configs[:-1]:
            block = build_block(channels, config, nyquist_hz)
            self.encoder.append(block)
            channels = block.out_channels
            skips.append(channels)
            self.downsamples.append(Downsample(channels, pointwise=downsample_conv))
        self.bottleneck = build_block(channels, configs[-1], nyquist_hz)
        channels = self.bottleneck.out_channels
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for config, skip in zip(reversed(configs[:-1]), reversed(skips), strict=True):
            self.upsamples.append(Upsample(channels))
            block = build_block(channels + skip, config, nyquist_hz)
            self.decoder.append(block)
            channels = block.out_channels
        self.final_block = DenseBlock(channels, final_growth_rate, final_layers)
        self.output_conv = nn.Conv2d(final_growth_rate, out_channels, kernel_size=1, bias=True)
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        factor = 2**self.scales
        bins, frames = x.shape[-2], x.shape[-1]
        if bins % factor:
            raise ValueError(
                f"spatial size {(bins, frames)} must be divisible by {factor} for {self.scales} "
                "scales (the band edges depend on the bins, so they are not padded)"
            )
        pad = (-frames) % factor
        out = self.input_layer(F.pad(x, (0, pad)) if pad else x)
        skips: list[Tensor] = []
        for block, down in zip(self.encoder, self.downsamples, strict=True):
            out = block(out)
            skips.append(out)
            out = down(out)
        out = self.bottleneck(out)
        for up, block, skip in zip(self.upsamples, self.decoder, reversed(skips), strict=True):
            out = block(torch.cat([up(out), skip], dim=1))
        out = self.output_conv(self.final_block(out))
        out = apply_output_activation(out, self.output_activation)
        return out[..., :frames] if pad else out


def stack_bands(x: Tensor, n_bands: int) -> Tensor:
    """``(B, C, F, T)`` -> ``(B, n_bands * C, F / n_bands, T)``: the ``n_bands`` equal
    frequency bands put on top of each other in channels, lowest band first (channel
    ``band * C + c`` holds channel ``c`` of band ``band``; MBC, spec B2)."""
    if x.shape[-2] % n_bands:
        raise ValueError(f"{x.shape[-2]} bins do not split into {n_bands} equal bands")
    return torch.cat(x.chunk(n_bands, dim=-2), dim=1)


def unstack_bands(x: Tensor, n_bands: int) -> Tensor:
    """Inverse of ``stack_bands``: channel group ``g`` (of ``C / n_bands`` maps) becomes the
    bins of band ``g``, lowest first: ``(B, C, F, T)`` -> ``(B, C / n_bands, n_bands * F, T)``."""
    if x.shape[1] % n_bands:
        raise ValueError(f"{x.shape[1]} channels do not split into {n_bands} groups")
    return torch.cat(x.chunk(n_bands, dim=1), dim=-2)


class BandChannelDenseNet(nn.Module):
    """Multi-band channels, MBC (thesis 4.4.1, Table 4.9, Fig. 4.6; spec 2.3).

    The input's bins below / from ``cutoff_bin`` are stacked as 2 channels (no full band) and
    fed to an ``MDenseNet`` (biased 3x3 input conv to ``first_channels`` maps, ``growth_rate``
    and ``layers`` in all ``2 * scales + 1`` blocks) whose own last dense block is moved (B1):
    the ``[upsampled, skip]`` maps it would have seen go through ``assign``, a bias-free 3x3
    conv to ``2 * kernels_per_band`` maps, whose groups are re-assembled along frequency
    (maps ``0..kernels_per_band - 1`` -> the low bins); then the moved dense block, a biased
    1x1 output conv and the output activation. Fig. 4.8 reads ``assign.weight``.
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1
    #: Versioned networks built inside this one: their changes change its results.
    results_components: ClassVar[tuple[type, ...]] = (MDenseNet,)
    n_bands: ClassVar[int] = 2

    def __init__(
        self,
        cutoff_bin: int = 512,
        first_channels: int = 96,
        growth_rate: int = 16,
        layers: int = 4,
        kernels_per_band: int = 16,
        output_activation: str = "relu",
        in_channels: int = 1,
        out_channels: int = 1,
        scales: int = 3,
        downsample_conv: bool = True,
    ) -> None:
        super().__init__()
        check_output_activation(output_activation)
        self.cutoff_bin = cutoff_bin
        self.output_activation = output_activation
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.unet = MDenseNet(
            self.n_bands * in_channels,
            (growth_rate,) * (2 * scales + 1),
            (layers,) * (2 * scales + 1),
            first_channels=first_channels,
            downsample_conv=downsample_conv,
        )
        moved = self.unet.decoder[-1]
        self.unet.decoder[-1] = nn.Identity()  # the U-Net now ends with [upsampled, skip]
        self.assign = nn.Conv2d(
            moved.in_channels, self.n_bands * kernels_per_band, 3, padding=1, bias=False
        )
        self.final_block = DenseBlock(kernels_per_band, growth_rate, layers)
        self.output_conv = nn.Conv2d(growth_rate, out_channels, kernel_size=1, bias=True)
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] != self.n_bands * self.cutoff_bin:
            raise ValueError(
                f"MBC stacks two equal bands: {x.shape[-2]} bins, cutoff_bin {self.cutoff_bin}"
            )
        stacked = stack_bands(x, self.n_bands)
        factor = 2**self.unet.scales
        if stacked.shape[-2] % factor:
            raise ValueError(
                f"spatial size {tuple(stacked.shape[-2:])} must be divisible by {factor} "
                f"for {self.unet.scales} scales"
            )
        assigned = self.assign(self.unet(stacked))
        out = self.output_conv(self.final_block(unstack_bands(assigned, self.n_bands)))
        return apply_output_activation(out, self.output_activation)
