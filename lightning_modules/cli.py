"""LightningCLI of the suite: ``python -m lightning_modules fit --config experiments/...yaml``.

The DataModule owns the sample rate, the context size, the STFT, the channels and the target
set; they are linked into the model so that one value in the YAML drives both. Linked values
are not part of a resolved config (they are the data's), so they never enter a run's hash twice.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI

from datamodules import MUSDBDataModule
from lightning_modules.separators.separator import Separator


class SuiteCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.rate", "model.init_args.rate")
        parser.link_arguments("data.context_frames", "model.init_args.context_frames")
        parser.link_arguments("data.stft", "model.init_args.stft")
        parser.link_arguments("data.channels", "model.init_args.channels")
        parser.link_arguments("data.targets", "model.init_args.targets")


class _ParseOnlyCLI(SuiteCLI):
    """Parses and validates a config without building anything."""

    def instantiate_classes(self) -> None:
        pass


def ignore_library_warnings() -> None:
    """Hide warnings of one library about another, harmless and not ours to fix, that every
    fit and test would print. Called by the entry points of training processes (``make_cli``;
    a caller that builds its CLI inside ``warnings.catch_warnings`` calls it itself), never at
    import: importing the suite leaves the warning filters alone."""
    # Lightning 2.6 builds pytree LeafSpecs, which torch 2.13 deprecated: on every fit/test,
    # and copies of them in torch.export (so not only from Lightning's module).
    message = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
    warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def make_cli(args: Any = None, run: bool = True, parse_only: bool = False, **kwargs) -> SuiteCLI:
    """The CLI over any ``Separator`` subclass and the shared MUSDB DataModule. ``args`` may be
    a list of command-line words or a config dict (what the table runner passes)."""
    ignore_library_warnings()
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return (_ParseOnlyCLI if parse_only else SuiteCLI)(
        Separator, MUSDBDataModule, subclass_mode_model=True, args=args, run=run, **kwargs
    )
