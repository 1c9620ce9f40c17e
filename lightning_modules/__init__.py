"""What is trained, and everything around it, in one-way layers (issue #10):

* ``nets``: the networks (plain ``nn.Module``s); ``dsp``: STFT, masks, Mel front end;
  ``evaluation``: museval, statistics, figures. None of them imports another part of the suite
  but ``datamodules``' helpers.
* ``separators``: the LightningModules (what is trained), their losses and checkpoint loading.
* ``cli``: the LightningCLI; ``inference``: export, runtimes, streaming, ``make separate``,
  ``make stats``, latency.

Importing this package imports none of them. The model classes are loaded on first access, so
``lightning_modules.SpectrogramSeparator`` (the class path in the experiment files, and so in
every run's hash and checkpoint) stays what it was, while the light users (the museval worker
processes, ``python -m lightning_modules.inference.separate``) do not load Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_modules.separators.chimera import ChimeraSeparator
    from lightning_modules.separators.multitask import MultiTaskSeparator
    from lightning_modules.separators.oracle import OracleMaskSeparator
    from lightning_modules.separators.separator import Separator
    from lightning_modules.separators.spectrogram import SpectrogramSeparator
    from lightning_modules.separators.wiener import WienerCombination

#: Class name -> its module. These names are the ``class_path``s of experiments/: never remove one.
_CLASSES = {
    "ChimeraSeparator": "lightning_modules.separators.chimera",
    "MultiTaskSeparator": "lightning_modules.separators.multitask",
    "OracleMaskSeparator": "lightning_modules.separators.oracle",
    "Separator": "lightning_modules.separators.separator",
    "SpectrogramSeparator": "lightning_modules.separators.spectrogram",
    "WienerCombination": "lightning_modules.separators.wiener",
}

__all__ = [
    "ChimeraSeparator",
    "MultiTaskSeparator",
    "OracleMaskSeparator",
    "Separator",
    "SpectrogramSeparator",
    "WienerCombination",
]


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        value = getattr(importlib.import_module(_CLASSES[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLASSES})
