"""Oracle Wiener-like masks, linear or Mel-scaled (thesis 5.2.1, Table 5.3): no training.

The mask is computed from the true vocals and accompaniment (eq. 2.13, alpha = 2); a Mel mask
is computed on the Mel spectrograms of the true sources (eq. 5.1) and interpolated back to
linear bins with the filter bank's transpose (eq. 5.2). The result is an upper bound on what a
network estimating such a mask can reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from datamodules.conventions import HOP, targets_from_sources
from lightning_modules.dsp.spectral import (
    apply_mask,
    istft,
    linear_to_mel,
    mel_filterbank,
    mel_to_linear_mask,
    stft,
    wiener_like_mask,
)
from lightning_modules.evaluation.figures import oracle_masks_figure
from lightning_modules.separators.separator import Separator

FIGURE_SECONDS = 10.0  # thesis Fig. 5.3: a 10-second extract


def oracle_vocals_mask(
    vocals: torch.Tensor,
    accompaniment: torch.Tensor,
    rate: int,
    mel_bins: int | None,
    alpha: float = 2.0,
) -> torch.Tensor:
    """(F, frames) Wiener-like mask of the vocals from the two true source spectra: on linear
    bins, or on ``mel_bins`` Mel bins (eq. 5.1) interpolated back to linear ones (eq. 5.2)."""
    magnitudes = torch.stack([vocals.abs(), accompaniment.abs()])
    if mel_bins is None:
        return wiener_like_mask(magnitudes, alpha)[0]
    bank = mel_filterbank(rate, mel_bins).to(magnitudes)
    mel_mask = wiener_like_mask(linear_to_mel(magnitudes, bank), alpha)[0]
    return mel_to_linear_mask(mel_mask, bank)


class OracleMaskSeparator(Separator):
    """Separates with the oracle Wiener-like mask of the vocals.

    Args:
        mel_bins: None for the linear STFT mask (1024 bins), else the number of Mel filters.
        alpha: the mask's exponent (2: the classical Wiener filter, as in Table 5.3).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

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
        return oracle_vocals_mask(
            vocals, accompaniment, self.rate, self.hparams.mel_bins, self.hparams.alpha
        )

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        if targets is None:
            raise ValueError("an oracle mask needs the true sources of the track")
        vocals, accompaniment = stft(targets_from_sources(targets, "vocals"), center=True)
        mask = self.vocals_mask(vocals, accompaniment)
        return istft(apply_mask(mask, stft(mixture, center=True)), length=mixture.shape[-1])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        if batch_idx == 0 and self.hparams.mel_bins is not None and self.trainer.is_global_zero:
            # thesis Fig. 5.3 from the first test track
            self.plot_masks(batch, Path(self.trainer.default_root_dir) / "oracle_masks.png")

    @torch.no_grad()
    def plot_masks(self, batch: dict, path: Path) -> Path:
        """Log-magnitude spectrograms of the oracle vocals estimate with the linear mask (a)
        and with this model's Mel mask (b), over the 10 s of the track with the loudest
        vocals (the whole track if shorter)."""
        vocals, accompaniment = stft(targets_from_sources(batch["targets"], "vocals"), center=True)
        mixture = stft(batch["mixture"], center=True)
        frames = min(mixture.shape[-1], round(FIGURE_SECONDS * self.rate / HOP))
        energy = vocals.abs().square().sum(0).unfold(0, frames, 1).sum(-1)
        window = slice(int(energy.argmax()), int(energy.argmax()) + frames)
        vocals, accompaniment, mixture = (x[:, window] for x in (vocals, accompaniment, mixture))
        estimates = {
            f"{name} mask": oracle_vocals_mask(vocals, accompaniment, self.rate, bins) * mixture
            for name, bins in (
                ("linear STFT", None),
                (f"Mel ({self.hparams.mel_bins} bins)", self.hparams.mel_bins),
            )
        }
        return oracle_masks_figure(estimates, self.rate, HOP, path)

    def configure_optimizers(self) -> None:
        return None
