"""Rebuild a trained separator from its checkpoint (``make separate``, export, stats, and the
two-model Wiener filter, which combines two checkpoints)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from lightning_modules.separators.separator import Separator


def load_separator(checkpoint: str | Path, map_location: str = "cpu") -> Separator:
    """Rebuild the exact LightningModule (and its network) a checkpoint was trained with.

    LightningCLI stores the module's class path and the network's config in the checkpoint;
    loading through the concrete class lets Lightning's instantiator rebuild both.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    class_path = hparams.get("_class_path")
    if class_path is None:
        raise ValueError(f"{path} was not written by the suite's LightningCLI (no _class_path)")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Separator)):
        raise ValueError(f"{path}: {class_path} is not a separation model")
    model = cls.load_from_checkpoint(path, map_location=map_location)
    return model.eval()
