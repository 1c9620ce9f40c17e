"""Network architectures (plain ``nn.Module``s, no training logic)."""

from lightning_modules.nets.heads import EmbeddingHead, MultiHeadMMDenseNet
from lightning_modules.nets.mmdensenet import (
    FULL_BAND,
    HIGH_BAND,
    LOW_BAND,
    BandConfig,
    BottleneckDenseLayer,
    DenseBlock,
    DenseLayer,
    Downsample,
    MDenseNet,
    MMDenseNet,
    Upsample,
)

__all__ = [
    "FULL_BAND",
    "HIGH_BAND",
    "LOW_BAND",
    "BandConfig",
    "BottleneckDenseLayer",
    "DenseBlock",
    "DenseLayer",
    "Downsample",
    "EmbeddingHead",
    "MDenseNet",
    "MMDenseNet",
    "MultiHeadMMDenseNet",
    "Upsample",
]
