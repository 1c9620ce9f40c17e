"""What is trained: LightningModules of the suite (networks live in ``lightning_modules.nets``)."""

from lightning_modules.oracle import OracleMaskSeparator
from lightning_modules.separator import Separator
from lightning_modules.spectrogram import SpectrogramSeparator

__all__ = ["OracleMaskSeparator", "Separator", "SpectrogramSeparator"]
