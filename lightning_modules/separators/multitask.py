"""Multi-task training (thesis 4.3, Table 4.7): a second head estimates the accompaniment.

The accompaniment head is a training-time regulariser and is dropped at inference, unless
the row computes joint Wiener-filter-like masks from both heads (then both are needed).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.dsp.spectral import wiener_like_mask
from lightning_modules.separators.spectrogram import SpectrogramSeparator, thesis_layout_only


class MultiTaskSeparator(SpectrogramSeparator):
    """Vocals ("main") and accompaniment ("second") heads of one ``MultiHeadMMDenseNet``.

    Args:
        joint_mask: combine both heads into Wiener-filter-like masks (alpha 2) inside the
            model (thesis Fig. 4.4, blue); the masked mixture is what is trained and tested.
        Other arguments as ``SpectrogramSeparator`` (the objective applies to both heads).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(self, net: nn.Module, joint_mask: bool = False, **kwargs) -> None:
        thesis_layout_only("MultiTaskSeparator", kwargs)
        super().__init__(net, **kwargs)
        if self.target_index != 0:
            raise ValueError("multi-task models estimate the vocals with their main head")
        if joint_mask and self.hparams.objective != "spectrogram":
            raise ValueError("joint mask computation combines spectrogram heads (objective SA)")
        self.joint_mask = joint_mask

    def joint_magnitudes(self, heads: dict, mixture: torch.Tensor) -> torch.Tensor:
        """(B, 2, F, T): vocals and accompaniment as Wiener-like masks of the mixture."""
        estimates = torch.stack([heads["main"].abs(), heads["second"].abs()], dim=-3)
        return wiener_like_mask(estimates, alpha=2.0) * mixture.unsqueeze(-3)

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        if not self.joint_mask:
            return super().forward(magnitude)
        return self.joint_magnitudes(self.heads(magnitude), magnitude)[..., 0, :, :]

    def training_loss(self, batch: dict) -> torch.Tensor:
        mixture, vocals = self.spectrum(self._mix(batch)), self.spectrum(self._target(batch))
        accompaniment = mixture - vocals
        heads = self.heads(mixture.abs())
        if self.joint_mask:
            estimates = self.joint_magnitudes(heads, mixture.abs())
            references = torch.stack([vocals.abs(), accompaniment.abs()], dim=-3)
            return 2 * F.mse_loss(estimates, references)  # the sum of the two heads' MSEs
        return self.objective_loss(heads["main"], mixture, vocals) + self.objective_loss(
            heads["second"], mixture, accompaniment
        )
