"""Oracle Wiener-like masks, linear or Mel-scaled (thesis 5.2.1, Table 5.3): no training.

The mask is computed from the true vocals and accompaniment (eq. 2.13, alpha = 2); a Mel mask
is computed on the Mel spectrograms of the true sources (eq. 5.1) and interpolated back to
linear bins with the filter bank's transpose (eq. 5.2). The result is an upper bound on what a
network estimating such a mask can reach.
"""

from __future__ import annotations

import torch

from datamodules.sampler import targets_from_sources
from lightning_modules.dsp import (
    apply_mask,
    istft,
    linear_to_mel,
    mel_filterbank,
    mel_to_linear_mask,
    stft,
    wiener_like_mask,
)
from lightning_modules.separator import Separator


class OracleMaskSeparator(Separator):
    """Separates with the oracle Wiener-like mask of the vocals.

    Args:
        mel_bins: None for the linear STFT mask (1024 bins), else the number of Mel filters.
        alpha: the mask's exponent (2: the classical Wiener filter, as in Table 5.3).
    """

    trainable = False

    def __init__(
        self,
        mel_bins: int | None = None,
        alpha: float = 2.0,
        rate: int = 32000,
        context_frames: int = 64,
        eval_workers: int = 2,
    ) -> None:
        super().__init__(rate=rate, context_frames=context_frames, eval_workers=eval_workers)
        self.save_hyperparameters()

    def vocals_mask(self, vocals: torch.Tensor, accompaniment: torch.Tensor) -> torch.Tensor:
        """(F, frames) mask of the vocals from the two true source spectra."""
        magnitudes = torch.stack([vocals.abs(), accompaniment.abs()])
        if self.hparams.mel_bins is None:
            return wiener_like_mask(magnitudes, self.hparams.alpha)[0]
        bank = mel_filterbank(self.rate, self.hparams.mel_bins).to(magnitudes)
        mel_mask = wiener_like_mask(linear_to_mel(magnitudes, bank), self.hparams.alpha)[0]
        return mel_to_linear_mask(mel_mask, bank)

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        if targets is None:
            raise ValueError("an oracle mask needs the true sources of the track")
        vocals, accompaniment = stft(targets_from_sources(targets, "vocals"), center=True)
        mask = self.vocals_mask(vocals, accompaniment)
        return istft(apply_mask(mask, stft(mixture, center=True)), length=mixture.shape[-1])

    def configure_optimizers(self) -> None:
        return None
