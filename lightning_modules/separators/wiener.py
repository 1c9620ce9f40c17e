"""The two-model Wiener filter of thesis Table 4.6: vocals and accompaniment baselines
combined into a Wiener-like mask (alpha 2) as a post-processing step. Evaluated, not trained."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from lightning_modules.dsp.spectral import wiener_like_mask
from lightning_modules.separators.checkpoint import load_separator
from lightning_modules.separators.spectrogram import SpectrogramSeparator, thesis_layout_only


class WienerCombination(SpectrogramSeparator):
    """Args: ``vocals`` and ``accompaniment``: checkpoints of two trained separators (in a
    table, ``row:<label>`` references); ``alpha``: the mask exponent."""

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    trainable = False

    def __init__(self, vocals: str, accompaniment: str, alpha: float = 2.0, **kwargs) -> None:
        models = [load_separator(path) for path in (vocals, accompaniment)]
        if [m.target_index for m in models] != [0, 1]:
            raise ValueError(
                f"{vocals} must estimate the vocals and {accompaniment} the accompaniment"
            )
        thesis_layout_only("WienerCombination", kwargs)
        super().__init__(nn.ModuleList(models), **kwargs)
        for path, model in zip((vocals, accompaniment), models, strict=True):
            if (model.stft_config, model.channels) != (self.stft_config, self.channels):
                raise ValueError(
                    f"{path} was trained with {model.stft_config}, {model.channels} channel(s); "
                    f"this row has {self.stft_config}, {self.channels} channel(s)"
                )
        self.alpha = alpha

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        """The vocals' magnitude: Wiener-like mask of both models' estimates times the mixture."""
        estimates = torch.stack([model.estimate_magnitude(magnitude) for model in self.net], -3)
        return wiener_like_mask(estimates, self.alpha)[..., 0, :, :] * magnitude
