"""MMDenseNet (Takahashi & Mitsufuji 2017) as implemented in the efficient-MSS master thesis.

Follows Section 3.2 / 3.2.1 of the thesis: convolutions have no bias except the input and
output convolutions (BatchNorm supplies the bias everywhere else), a dense block outputs only
the last dense layer's ``k`` maps, and the low/high band outputs are zero-padded in channels
before being joined along frequency. The default model has exactly 268,929 parameters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUTPUT_ACTIVATIONS = ("relu", "none", "abs", "sigmoid")


def check_output_activation(name: str) -> str:
    """Validate an output-activation name at construction time (not on the first forward)."""
    if name not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {name!r}")
    return name


def apply_output_activation(x: Tensor, name: str) -> Tensor:
    """The output function named ``name`` (one of ``OUTPUT_ACTIVATIONS``), shared by all heads."""
    if name == "relu":
        return F.relu(x)
    if name == "abs":
        return x.abs()
    if name == "sigmoid":
        return torch.sigmoid(x)
    return x


def check_dropout(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {p}")
    return float(p)


def kaiming_init_(module: nn.Module) -> None:
    """Kaiming-normal conv weights (ReLU gain), zero biases, BatchNorm to identity.

    A free function so that networks built around an ``MMDenseNet`` (extra heads) initialise
    their own layers exactly like it.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DenseLayer(nn.Module):
    """Pre-activation composite function BN -> ReLU -> 3x3 conv producing ``growth_rate`` maps.

    The conv has no bias because the following layer's BatchNorm makes it redundant.
    ``dropout`` (after the conv, as in DenseNet) exists for the random search of thesis 3.3.4,
    which rejected it; it is a float, not a module, so inference graphs never see it.
    """

    def __init__(self, in_channels: int, growth_rate: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1, bias=False)
        self.dropout = check_dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.conv(F.relu(self.norm(x))), self.dropout, self.training)


class BottleneckDenseLayer(nn.Module):
    """Bottleneck-compressed composite function of thesis Fig. 5.5b (Section 5.3):
    1x1 conv halving the incoming maps -> BatchNorm -> ReLU -> 3x3 conv to ``growth_rate``.

    Attributes (in forward order; other tools rely on these names):

    * ``compress``: ``nn.Conv2d(in_channels, mid_channels, 1, bias=False)`` with
      ``mid_channels = ceil(in_channels * compression)`` (thesis: a factor of 2). No BN/ReLU in
      front of it (unlike DenseNet-BC, Fig. 5.5a), so a BN-folding export can fold ``norm``
      into it; no bias, because ``norm`` follows.
    * ``norm``: ``nn.BatchNorm2d(mid_channels)``, then ReLU (functional, no module).
    * ``conv``: ``nn.Conv2d(mid_channels, growth_rate, 3, padding=1, bias=False)``; no bias,
      because the next layer's ``compress`` + ``norm`` (or the final block's) absorb it.

    ``norm`` and ``conv`` keep ``DenseLayer``'s names, so code that reads a layer's
    ``conv.out_channels`` works for both kinds of layer.
    """

    def __init__(
        self, in_channels: int, growth_rate: int, compression: float = 0.5, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must lie in (0, 1], got {compression}")
        self.mid_channels = math.ceil(in_channels * compression)
        self.compress = nn.Conv2d(in_channels, self.mid_channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(self.mid_channels)
        self.conv = nn.Conv2d(self.mid_channels, growth_rate, kernel_size=3, padding=1, bias=False)
        self.dropout = check_dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.relu(self.norm(self.compress(x))))
        return F.dropout(out, self.dropout, self.training)


class DenseBlock(nn.Module):
    """``num_layers`` densely connected layers; the output is only the LAST layer's maps.

    Layer ``i`` sees the block input concatenated with all previous layer outputs. Returning
    only the last layer (as in Fig. 1 of the MMDenseNet paper) keeps channel counts at ``k``
    instead of growing with every block. ``bottleneck_compression=True`` builds
    ``BottleneckDenseLayer``s (thesis Section 5.3, "BC") instead of ``DenseLayer``s;
    ``self.layers`` holds them either way. (The networks' flag of the same name sets it; a
    network's ``bottleneck`` is the U-Net's middle block, something else.)
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        num_layers: int,
        bottleneck_compression: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.in_channels = in_channels
        self.out_channels = growth_rate
        self.bottleneck_compression = bottleneck_compression  # a flag: no state_dict entry
        layer = BottleneckDenseLayer if bottleneck_compression else DenseLayer
        self.layers = nn.ModuleList(
            layer(in_channels + i * growth_rate, growth_rate, dropout=dropout)
            for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        out = x
        for layer in self.layers:
            out = layer(torch.cat(features, dim=1) if len(features) > 1 else features[0])
            features.append(out)
        return out


class Downsample(nn.Module):
    """1x1 bias-free conv (channels preserved) followed by 2x2 average pooling.

    ``pointwise=False`` is the thesis's "NoDSConvs" (Section 5.3): the 1x1 conv, which the
    MMDenseNet never uses to compress, is dropped and ``self.conv`` is ``None``; only
    ``self.pool`` remains.
    """

    def __init__(self, channels: int, pointwise: bool = True) -> None:
        super().__init__()
        self.conv: nn.Conv2d | None = (
            nn.Conv2d(channels, channels, kernel_size=1, bias=False) if pointwise else None
        )
        self.pool = nn.AvgPool2d(kernel_size=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x if self.conv is None else self.conv(x))


class Upsample(nn.Module):
    """2x2 stride-2 bias-free transposed conv (channels preserved), mirroring the pooling."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class MDenseNet(nn.Module):
    """Multi-scale DenseNet: a U-Net of dense blocks (one band of the MMDenseNet).

    ``growth_rates`` and ``layers`` list one entry per dense block in order encoder ->
    bottleneck -> decoder, so ``2 * s + 1`` entries for ``s`` scales. ``encode`` needs a
    spatial size divisible by ``2 ** s``; ``forward`` zero-pads any other size up to one
    (bins and frames at their ends) and crops the output back (an STFT with its DC bin has an
    odd number of bins). Output channels equal the last growth rate.

    ``n_decoders > 1`` adds independent decoders (same configuration) on the shared encoder,
    for multi-task heads split after the encoder (thesis Section 4.3). Decoder 0 keeps the
    attribute names ``upsamples``/``decoder`` so single-decoder state dicts are unchanged;
    further decoders live in ``extra_upsamples``/``extra_decoders``. ``forward`` uses decoder 0.

    ``downsample_conv=False`` drops the 1x1 convs of the down-sampling path (thesis
    "NoDSConvs"); ``bottleneck_compression=True`` builds every dense block from
    ``BottleneckDenseLayer``s (thesis "BC").
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        in_channels: int,
        growth_rates: Sequence[int],
        layers: Sequence[int],
        input_kernel_size: int = 3,
        first_channels: int = 32,
        n_decoders: int = 1,
        downsample_conv: bool = True,
        bottleneck_compression: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_decoders < 1:
            raise ValueError(f"n_decoders must be >= 1, got {n_decoders}")
        if len(growth_rates) != len(layers):
            raise ValueError("growth_rates and layers must have the same length")
        if len(growth_rates) % 2 != 1:
            raise ValueError("need an odd number of dense blocks (2 * scales + 1)")
        if input_kernel_size % 2 != 1:
            raise ValueError("input_kernel_size must be odd for 'same' padding")
        self.scales = len(growth_rates) // 2
        # Biased input conv: there is no BatchNorm in front of it to provide an offset.
        self.input_conv = nn.Conv2d(
            in_channels,
            first_channels,
            kernel_size=input_kernel_size,
            padding=input_kernel_size // 2,
            bias=True,
        )

        s = self.scales
        self.encoder = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        channels = first_channels
        skip_channels: list[int] = []
        for k, n in zip(growth_rates[:s], layers[:s], strict=True):
            self.encoder.append(DenseBlock(channels, k, n, bottleneck_compression, dropout))
            channels = k
            skip_channels.append(channels)
            self.downsamples.append(Downsample(channels, pointwise=downsample_conv))

        self.bottleneck = DenseBlock(
            channels, growth_rates[s], layers[s], bottleneck_compression, dropout
        )

        def build_decoder() -> tuple[nn.ModuleList, nn.ModuleList]:
            channels = growth_rates[s]
            upsamples, decoder = nn.ModuleList(), nn.ModuleList()
            for k, n, skip in zip(
                growth_rates[s + 1 :], layers[s + 1 :], reversed(skip_channels), strict=True
            ):
                upsamples.append(Upsample(channels))
                decoder.append(DenseBlock(channels + skip, k, n, bottleneck_compression, dropout))
                channels = k
            return upsamples, decoder

        self.upsamples, self.decoder = build_decoder()
        extra = [build_decoder() for _ in range(n_decoders - 1)]
        # Empty ModuleLists add no state-dict keys, so n_decoders=1 checkpoints are unchanged.
        self.extra_upsamples = nn.ModuleList(up for up, _ in extra)
        self.extra_decoders = nn.ModuleList(dec for _, dec in extra)
        self.n_decoders = n_decoders
        self.out_channels = self.decoder[-1].out_channels

    def decoder_parts(self, index: int = 0) -> tuple[nn.ModuleList, nn.ModuleList]:
        """``(upsamples, dense blocks)`` of decoder ``index``."""
        if not 0 <= index < self.n_decoders:
            raise IndexError(f"decoder_index {index} out of range for {self.n_decoders} decoders")
        if index == 0:
            return self.upsamples, self.decoder
        return self.extra_upsamples[index - 1], self.extra_decoders[index - 1]

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Input conv, encoder blocks and bottleneck: ``(bottleneck output, skips)``.

        ``skips`` are the encoder block outputs, finest scale first; run the encoder once and
        decode it with several decoders.
        """
        factor = 2**self.scales
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"spatial size {tuple(x.shape[-2:])} must be divisible by {factor} "
                f"for {self.scales} scales"
            )
        out = self.input_conv(x)
        skips: list[Tensor] = []
        for block, down in zip(self.encoder, self.downsamples, strict=True):
            out = block(out)
            skips.append(out)
            out = down(out)
        return self.bottleneck(out), skips

    def decode(self, bottleneck: Tensor, skips: Sequence[Tensor], decoder_index: int = 0) -> Tensor:
        """Upsampling path of decoder ``decoder_index``; ``skips`` is not modified."""
        upsamples, decoder = self.decoder_parts(decoder_index)
        out = bottleneck
        for up, block, skip in zip(upsamples, decoder, reversed(skips), strict=True):
            out = block(torch.cat([up(out), skip], dim=1))
        return out

    def pad_input(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``x`` zero-padded to a size ``encode`` takes, and its own (bins, frames). A size
        that needs no padding returns ``x`` itself (the thesis's sizes run unchanged)."""
        factor = 2**self.scales
        size = (x.shape[-2], x.shape[-1])
        pad_f, pad_t = (-size[0]) % factor, (-size[1]) % factor
        return (F.pad(x, (0, pad_t, 0, pad_f)) if pad_f or pad_t else x), size

    def forward(self, x: Tensor) -> Tensor:
        padded, (bins, frames) = self.pad_input(x)
        out = self.decode(*self.encode(padded))
        return out if padded is x else out[..., :bins, :frames]

    def decoder_view(self, index: int = 0) -> MDenseNet:
        """A single-decoder ``MDenseNet`` sharing this net's encoder and decoder ``index``.

        No weights are copied: the view's modules are this net's. Its parameters, state-dict
        keys and forward are those of a plain ``n_decoders=1`` MDenseNet, so it is what to
        count or export at inference when the extra decoders only served as training heads.
        """
        upsamples, decoder = self.decoder_parts(index)
        if self.n_decoders == 1:
            return self
        view = copy.copy(self)  # new Module object whose attributes refer to the same modules
        view._modules = dict(self._modules)
        view._modules["upsamples"], view._modules["decoder"] = upsamples, decoder
        view._modules["extra_upsamples"] = nn.ModuleList()
        view._modules["extra_decoders"] = nn.ModuleList()
        view.n_decoders = 1
        return view


@dataclass(frozen=True)
class BandConfig:
    """Growth rate and layer count per dense block of one MDenseNet (encoder -> decoder)."""

    growth_rates: tuple[int, ...]
    layers: tuple[int, ...]


# Table 1 of Takahashi & Mitsufuji (2017), s = 3 scales -> 7 dense blocks per band.
LOW_BAND = BandConfig(growth_rates=(14, 16, 16, 16, 16, 16, 16), layers=(4,) * 7)
HIGH_BAND = BandConfig(growth_rates=(10,) * 7, layers=(3,) * 7)
FULL_BAND = BandConfig(growth_rates=(6,) * 7, layers=(2, 2, 2, 4, 2, 2, 2))


class MMDenseNet(nn.Module):
    """Multi-scale multi-band DenseNet estimating one source's magnitude spectrogram.

    Input ``(B, in_channels, F, T)``; output ``(B, out_channels, F, T)``. A low-band and a
    high-band MDenseNet see the bins below / from ``split_bin`` (default ``F // 2``), a
    full-band MDenseNet sees all bins. Band outputs are zero-padded in channels to a common
    count and joined along frequency (low first), then concatenated in channels with the
    full-band output, and fed through a final dense block and a biased 1x1 output conv.

    Either band pair (``low``/``high``) or ``full`` may be ``None`` to build single-path
    variants; at least one path must remain. ``n_decoders`` is passed to every band (extra
    decoders for multi-task heads, see ``heads.MultiHeadMMDenseNet``); ``forward`` always
    uses decoder 0 and ``decoder_view(0)`` is the plain single-decoder model.

    Chapter 5 options (thesis Section 5.3), both off by default: ``downsample_conv=False``
    ("NoDSConvs") drops the 1x1 convs before every average pooling of every band;
    ``bottleneck_compression=True`` ("BC") uses ``BottleneckDenseLayer``s in every dense block,
    the final block included. ``dropout`` after every dense layer's conv (0: none, the
    thesis's choice; searched by ``make hpo-random-search``).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1
    #: Versioned networks built inside this one: their changes change its results.
    results_components: ClassVar[tuple[type, ...]] = (MDenseNet,)

    def __init__(
        self,
        input_kernel_size: int = 3,
        output_activation: str = "relu",
        in_channels: int = 1,
        out_channels: int = 1,
        low: BandConfig | None = LOW_BAND,
        high: BandConfig | None = HIGH_BAND,
        full: BandConfig | None = FULL_BAND,
        final_growth_rate: int = 4,
        final_layers: int = 2,
        first_channels: int = 32,
        split_bin: int | None = None,
        n_decoders: int = 1,
        downsample_conv: bool = True,
        bottleneck_compression: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_output_activation(output_activation)
        if (low is None) != (high is None):
            raise ValueError("low and high band must be given together (or both None)")
        if low is None and full is None:
            raise ValueError("at least one of the band pair or the full band is required")
        self.output_activation = output_activation
        self.split_bin = split_bin
        self.n_decoders = n_decoders
        # what a separator checks against the data's channels and its targets
        self.in_channels = in_channels
        self.out_channels = out_channels

        def build(cfg: BandConfig | None) -> MDenseNet | None:
            if cfg is None:
                return None
            return MDenseNet(
                in_channels,
                cfg.growth_rates,
                cfg.layers,
                input_kernel_size,
                first_channels,
                n_decoders,
                downsample_conv,
                bottleneck_compression,
                dropout,
            )

        self.low_band = build(low)
        self.high_band = build(high)
        self.full_band = build(full)

        self.band_channels = 0
        if self.low_band is not None and self.high_band is not None:
            self.band_channels = max(self.low_band.out_channels, self.high_band.out_channels)
        joined = self.band_channels + (self.full_band.out_channels if self.full_band else 0)
        self.downsample_conv = downsample_conv
        self.bottleneck_compression = bottleneck_compression
        self.final_block = DenseBlock(
            joined, final_growth_rate, final_layers, bottleneck_compression, dropout
        )
        # Biased output conv so earlier layers need not absorb the target's offset/scale.
        self.output_conv = nn.Conv2d(final_growth_rate, out_channels, kernel_size=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal conv weights (ReLU gain), zero biases, BatchNorm to identity."""
        kaiming_init_(self)

    @staticmethod
    def _pad_channels(x: Tensor, channels: int) -> Tensor:
        """Zero-pad the channel dimension of ``x`` up to ``channels``."""
        missing = channels - x.shape[1]
        if missing == 0:
            return x
        return F.pad(x, (0, 0, 0, 0, 0, missing))

    def join_bands(self, x: Tensor) -> Tensor:
        """Run the parallel MDenseNets and return the joined tensor fed to the final block.

        Channel layout: ``[band_channels of low|high joined along frequency, full-band]``.
        """
        return self.join_bands_per_decoder(x, (0,))[0]

    def join_bands_per_decoder(self, x: Tensor, decoder_indices: Sequence[int]) -> list[Tensor]:
        """One joined tensor (as in ``join_bands``) per band decoder in ``decoder_indices``.

        Each band's encoder runs once and is decoded by every requested decoder, which is how
        a multi-task net split after the encoder gets its second head's input.
        """

        def run(net: MDenseNet, inp: Tensor) -> list[Tensor]:
            if list(decoder_indices) == [0]:
                return [net(inp)]  # a module call, so forward hooks on the bands still fire
            padded, (bins, frames) = net.pad_input(inp)
            bottleneck, skips = net.encode(padded)
            outs = [net.decode(bottleneck, skips, i) for i in decoder_indices]
            return outs if padded is inp else [o[..., :bins, :frames] for o in outs]

        parts: list[list[Tensor]] = []
        if self.low_band is not None and self.high_band is not None:
            split = self.split_bin if self.split_bin is not None else x.shape[-2] // 2
            lows = run(self.low_band, x[..., :split, :])
            highs = run(self.high_band, x[..., split:, :])
            parts.append(
                [
                    torch.cat(
                        [
                            self._pad_channels(low, self.band_channels),
                            self._pad_channels(high, self.band_channels),
                        ],
                        dim=-2,
                    )
                    for low, high in zip(lows, highs, strict=True)
                ]
            )
        if self.full_band is not None:
            parts.append(run(self.full_band, x))
        return [torch.cat(p, dim=1) if len(p) > 1 else p[0] for p in zip(*parts, strict=True)]

    def forward(self, x: Tensor) -> Tensor:
        out = self.output_conv(self.final_block(self.join_bands(x)))
        return apply_output_activation(out, self.output_activation)

    def decoder_view(self, index: int = 0) -> MMDenseNet:
        """A single-decoder ``MMDenseNet`` sharing all weights, with band decoder ``index``.

        Returns ``self`` when there is only one decoder. Otherwise the view's parameters,
        state-dict keys and output are exactly a plain MMDenseNet's (no copies), so loading a
        plain checkpoint into it updates this net, and counting it gives inference cost.
        """
        if self.n_decoders == 1:
            if index != 0:
                raise IndexError(f"decoder index {index} out of range for 1 decoder")
            return self
        view = copy.copy(self)  # new Module object whose attributes refer to the same modules
        view._modules = dict(self._modules)
        for name in ("low_band", "high_band", "full_band"):
            band = self._modules[name]
            if band is not None:
                view._modules[name] = band.decoder_view(index)
        view.n_decoders = 1
        return view
