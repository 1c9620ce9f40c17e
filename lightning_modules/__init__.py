"""What is trained: LightningModules of the suite (networks live in ``lightning_modules.nets``)."""

from lightning_modules.chimera import ChimeraSeparator
from lightning_modules.multitask import MultiTaskSeparator
from lightning_modules.oracle import OracleMaskSeparator
from lightning_modules.separator import Separator
from lightning_modules.spectrogram import SpectrogramSeparator
from lightning_modules.wiener import WienerCombination

__all__ = [
    "ChimeraSeparator",
    "MultiTaskSeparator",
    "OracleMaskSeparator",
    "Separator",
    "SpectrogramSeparator",
    "WienerCombination",
]
