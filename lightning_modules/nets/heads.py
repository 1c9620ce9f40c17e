"""MMDenseNet with auxiliary output heads for the training objectives of thesis chapter 4.

* Multi-task heads (Section 4.3, Fig. 4.4): a second output (e.g. the accompaniment) either
  from a second final dense block on the shared joined tensor (``second_head="out_block"``)
  or from a second decoder per band after the shared encoders (``second_head="decoder"``).
* Chimera deep clustering (Section 4.6): a unit-norm embedding per time-frequency bin, branched
  off before (``"pre_block"``) or after (``"post_block"``) the final dense block.

The auxiliary heads are training-time regularisers and are dropped at inference:
``inference_net()`` returns the plain MMDenseNet (shared weights) that computes ``"main"``.
Only modules live here; losses belong to the LightningModules.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.mmdensenet import (
    FULL_BAND,
    HIGH_BAND,
    LOW_BAND,
    BandConfig,
    DenseBlock,
    DenseLayer,
    MMDenseNet,
    apply_output_activation,
    check_output_activation,
    kaiming_init_,
)

SECOND_HEADS = ("out_block", "decoder")
EMBEDDING_SPLITS = ("pre_block", "post_block")


class EmbeddingHead(nn.Module):
    """Deep-clustering embeddings: one composite function (BN -> ReLU -> 3x3 conv, i.e. a
    ``DenseLayer``) to ``embedding_dim`` maps, unit-normalised per time-frequency bin.

    ``eps`` keeps all-zero bins (silence) finite: they map to the zero vector, not NaN.
    """

    def __init__(self, in_channels: int, embedding_dim: int = 20, eps: float = 1e-8) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.layer = DenseLayer(in_channels, embedding_dim)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.layer(x), dim=1, eps=self.eps)


class MultiHeadMMDenseNet(nn.Module):
    """The default MMDenseNet (``self.main``) plus optional second-source and embedding heads.

    Args:
        input_kernel_size, output_activation: as for ``MMDenseNet`` (main head).
        second_head: ``None``, ``"out_block"`` (own final dense block + output conv on the
            shared joined tensor, Fig. 4.4) or ``"decoder"`` (every band gets a second decoder
            feeding the second head's own final block + output conv).
        second_activation: output function of the second head (default: ``output_activation``).
        embedding_split: ``None``, ``"pre_block"`` (embeddings from the joined tensor entering
            the final dense block) or ``"post_block"`` (from the final block's output, just
            before the output conv).
        embedding_dim: K, the embedding dimension (thesis: 20).
        low, high, full, split_bin, downsample_conv, bottleneck_compression, dropout: the main
            MMDenseNet's bands and chapter-5 options (see ``MMDenseNet``); a second head's final
            block is built like the main one's (with bottleneck layers under BC).

    ``forward`` maps ``(B, 1, F, T)`` to a dict with ``"main"`` ``(B, 1, F, T)``, plus
    ``"second"`` ``(B, 1, F, T)`` and/or ``"embedding"`` ``(B, embedding_dim, F, T)`` when
    those heads exist. ``"main"`` is exactly what ``self.main`` (a plain MMDenseNet) computes.
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1
    #: Versioned networks built inside this one: their changes change its results.
    results_components: ClassVar[tuple[type, ...]] = (MMDenseNet,)

    def __init__(
        self,
        input_kernel_size: int = 3,
        output_activation: str = "relu",
        second_head: str | None = None,
        second_activation: str | None = None,
        embedding_split: str | None = None,
        embedding_dim: int = 20,
        low: BandConfig | None = LOW_BAND,
        high: BandConfig | None = HIGH_BAND,
        full: BandConfig | None = FULL_BAND,
        split_bin: int | None = None,
        downsample_conv: bool = True,
        bottleneck_compression: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if second_head is not None and second_head not in SECOND_HEADS:
            raise ValueError(
                f"second_head must be None or one of {SECOND_HEADS}, got {second_head!r}"
            )
        if embedding_split is not None and embedding_split not in EMBEDDING_SPLITS:
            raise ValueError(
                f"embedding_split must be None or one of {EMBEDDING_SPLITS}, "
                f"got {embedding_split!r}"
            )
        if second_head is None and second_activation is not None:
            raise ValueError("second_activation needs a second_head")
        self.second_head = second_head
        self.second_activation = check_output_activation(second_activation or output_activation)
        self.embedding_split = embedding_split

        self.main = MMDenseNet(
            input_kernel_size=input_kernel_size,
            output_activation=output_activation,
            n_decoders=2 if second_head == "decoder" else 1,
            low=low,
            high=high,
            full=full,
            split_bin=split_bin,
            downsample_conv=downsample_conv,
            bottleneck_compression=bottleneck_compression,
            dropout=dropout,
        )
        final = self.main.final_block
        self.second_block: DenseBlock | None = None
        self.second_output_conv: nn.Conv2d | None = None
        if second_head is not None:
            # Same configuration as the main head's final block and (biased) output conv.
            self.second_block = DenseBlock(
                final.in_channels,
                final.out_channels,
                len(final.layers),
                final.bottleneck_compression,
                dropout,
            )
            self.second_output_conv = nn.Conv2d(
                final.out_channels, self.main.output_conv.out_channels, kernel_size=1, bias=True
            )
        self.embedding: EmbeddingHead | None = None
        if embedding_split is not None:
            in_channels = (
                final.in_channels if embedding_split == "pre_block" else final.out_channels
            )
            self.embedding = EmbeddingHead(in_channels, embedding_dim)
        # Only the heads: ``self.main`` is already initialised by MMDenseNet, so for the same
        # seed the main path starts from the baseline's weights (except with a second decoder,
        # which is built inside the bands and shifts the random stream).
        for head in (self.second_block, self.second_output_conv, self.embedding):
            if head is not None:
                kaiming_init_(head)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        decoders = (0, 1) if self.second_head == "decoder" else (0,)
        joined = self.main.join_bands_per_decoder(x, decoders)
        features = self.main.final_block(joined[0])
        out = {
            "main": apply_output_activation(
                self.main.output_conv(features), self.main.output_activation
            )
        }
        if self.second_block is not None and self.second_output_conv is not None:
            second = self.second_output_conv(self.second_block(joined[-1]))
            out["second"] = apply_output_activation(second, self.second_activation)
        if self.embedding is not None:
            source = joined[0] if self.embedding_split == "pre_block" else features
            out["embedding"] = self.embedding(source)
        return out

    def inference_net(self) -> MMDenseNet:
        """The plain MMDenseNet computing ``"main"`` as a tensor, sharing (not copying) weights.

        Use it for inference and for parameter/MAC counts: the auxiliary heads are dropped, so
        the default configuration has the baseline's 268,929 parameters for every head variant
        (for ``"decoder"`` only decoder 0 of each band is kept). Its state-dict keys are a
        plain MMDenseNet's, so ``inference_net().load_state_dict(plain_checkpoint)`` works.
        """
        return self.main.decoder_view(0)
