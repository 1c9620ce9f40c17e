"""Audio only: MUSDB18 (real or synthetic) as a Lightning DataModule."""

from datamodules.musdb_datamodule import MUSDBDataModule

__all__ = ["MUSDBDataModule"]
