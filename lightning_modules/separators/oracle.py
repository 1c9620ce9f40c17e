"""Oracle masks, no training: Wiener-like masks, linear or Mel-scaled (thesis 5.2.1, Table
5.3), and the ideal ratio mask (IRM), for any target set, stereo and any STFT.

The mask is computed from the true sources (eq. 2.13, alpha = 2 for the Wiener filter; alpha =
1 for the IRM); a Mel mask is computed on the Mel spectrograms of the true sources (eq. 5.1) and
interpolated back to linear bins with the filter bank's transpose (eq. 5.2). The result is an
upper bound on what a network estimating such a mask can reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from datamodules.conventions import N_FFT, SOURCES, STFTConfig
from lightning_modules.dsp.spectral import (
    apply_mask,
    linear_to_mel,
    mel_filterbank,
    mel_to_linear_mask,
    wiener_like_mask,
)
from lightning_modules.evaluation.figures import oracle_masks_figure
from lightning_modules.separators.separator import VOCALS_PAIR, Separator

FIGURE_SECONDS = 10.0  # thesis Fig. 5.3: a 10-second extract
#: The oracle masks: Wiener-like ("wf", exponent ``alpha``) or the ideal ratio mask ("irm",
#: |S_n| / sum_m |S_m|: sigsep's IRM1, the Wiener-like mask with alpha 1).
MASKS: tuple[str, ...] = ("wf", "irm")


def oracle_masks(
    magnitudes: torch.Tensor,
    rate: int,
    mel_bins: int | None,
    alpha: float = 2.0,
    n_fft: int = N_FFT,
    keep_dc: bool = False,
) -> torch.Tensor:
    """Wiener-like masks (K, ..., F, frames) of K sources from their magnitudes (K, ..., F,
    frames), sources first (channels may follow): on linear bins, or on ``mel_bins`` Mel bins
    (eq. 5.1) interpolated back to linear ones (eq. 5.2)."""
    magnitudes = magnitudes.movedim(0, -3)  # wiener_like_mask wants the sources on dim -3
    if mel_bins is None:
        return wiener_like_mask(magnitudes, alpha).movedim(-3, 0)
    bank = mel_filterbank(rate, mel_bins, n_fft, drop_dc=not keep_dc).to(magnitudes)
    mel_masks = wiener_like_mask(linear_to_mel(magnitudes, bank), alpha)
    return mel_to_linear_mask(mel_masks, bank).movedim(-3, 0)


def oracle_vocals_mask(
    vocals: torch.Tensor,
    accompaniment: torch.Tensor,
    rate: int,
    mel_bins: int | None,
    alpha: float = 2.0,
    n_fft: int = N_FFT,
    keep_dc: bool = False,
) -> torch.Tensor:
    """(..., F, frames) Wiener-like mask of the vocals from the two true source spectra: on
    linear bins, or on ``mel_bins`` Mel bins (eq. 5.1) interpolated back to linear ones
    (eq. 5.2)."""
    magnitudes = torch.stack([vocals.abs(), accompaniment.abs()], dim=-3)
    if mel_bins is None:
        return wiener_like_mask(magnitudes, alpha)[..., 0, :, :]
    bank = mel_filterbank(rate, mel_bins, n_fft, drop_dc=not keep_dc).to(magnitudes)
    mel_mask = wiener_like_mask(linear_to_mel(magnitudes, bank), alpha)[..., 0, :, :]
    return mel_to_linear_mask(mel_mask, bank)


class OracleMaskSeparator(Separator):
    """Separates with oracle masks of the true sources.

    With the target set "vocals" (the thesis) the vocals are masked and the accompaniment is
    mixture - vocals, as for every vocals model; with any other set every target gets its own
    mask, computed over the targets and, where they do not add up to the mixture (a list of
    sources), the rest of the mixture as one more source. Masks are per channel.

    Args:
        mel_bins: None for the linear STFT mask (1024 bins at the thesis's STFT), else the
            number of Mel filters.
        alpha: the Wiener-like mask's exponent (2: the classical Wiener filter, as in Table 5.3).
        mask: "wf" (Wiener-like, exponent ``alpha``) or "irm" (the ideal ratio mask |S_n| /
            sum_m |S_m|, i.e. alpha 1: sigsep's IRM1; sigsep's IRM2 is "wf" with alpha 2).
        stft, channels, targets: see ``Separator`` (linked from the data).
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
        mask: str = "wf",
        stft: STFTConfig | None = None,
        channels: int = 1,
        targets: str | list[str] = "vocals",
        evaluator: str = "museval",
    ) -> None:
        super().__init__(
            rate=rate,
            context_frames=context_frames,
            eval_workers=eval_workers,
            stft=stft,
            channels=channels,
            targets=targets,
            evaluator=evaluator,
        )
        if mask not in MASKS:
            raise ValueError(f"model.init_args.mask must be one of {MASKS}, got {mask!r}")
        if mask == "irm" and alpha != 2.0:
            raise ValueError("the IRM's exponent is 1: alpha applies to mask 'wf' only")
        self.save_hyperparameters()
        self.alpha = 1.0 if mask == "irm" else alpha

    @property
    def output_targets(self) -> tuple[str, ...]:
        return self.target_names

    def masks(self, magnitudes: torch.Tensor) -> torch.Tensor:
        """Masks (K, ..., F, frames) of K sources from their linear magnitudes."""
        config = self.stft_config
        return oracle_masks(
            magnitudes, self.rate, self.hparams.mel_bins, self.alpha, config.n_fft, config.keep_dc
        )

    def vocals_mask(self, vocals: torch.Tensor, accompaniment: torch.Tensor) -> torch.Tensor:
        """(..., F, frames) mask of the vocals from the two true source spectra."""
        config = self.stft_config
        return oracle_vocals_mask(
            vocals,
            accompaniment,
            self.rate,
            self.hparams.mel_bins,
            self.alpha,
            config.n_fft,
            config.keep_dc,
        )

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        if targets is None:
            raise ValueError("an oracle mask needs the true sources of the track")
        if mixture.dim() == 1:  # (T,) with targets (N, T)
            return self.separate_vocals(mixture[None], targets[:, None])[0]
        pair = self.vocals_pair(mixture, targets)  # (2, C, T)
        if mixture.shape[0] == 1:  # mono: the thesis's (F, frames) spectra
            return self._masked_vocals(mixture[0], pair[:, 0])[None]
        return self._masked_vocals(mixture, pair)

    def _masked_vocals(self, mixture: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        vocals, accompaniment = self.spectrum(pair, center=True)
        mask = self.vocals_mask(vocals, accompaniment)
        spectrum = self.spectrum(mixture, center=True)
        return self.waveform(apply_mask(mask, spectrum), length=mixture.shape[-1])

    def separate(self, mixture: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if self.target_names == VOCALS_PAIR:
            return super().separate(mixture, targets)
        if targets is None:
            raise ValueError("an oracle mask needs the true sources of the track")
        spectrum = self.spectrum(mixture, center=True)  # (C, F, frames)
        sources = self.spectrum(targets, center=True)  # (N, C, F, frames)
        magnitudes = sources.abs()
        if set(self.target_names) != set(SOURCES):  # the rest of the mixture is a source too
            rest = (spectrum - sources.sum(dim=0)).abs()
            magnitudes = torch.cat([magnitudes, rest[None]])
        masks = self.masks(magnitudes)[: len(self.target_names)]
        return self.waveform(apply_mask(masks, spectrum[None]), length=mixture.shape[-1])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        first = batch_idx == 0 and self.trainer.is_global_zero
        if first and self.hparams.mel_bins is not None and self.target_names == VOCALS_PAIR:
            # thesis Fig. 5.3 from the first test track
            self.plot_masks(batch, Path(self.trainer.default_root_dir) / "oracle_masks.png")

    @torch.no_grad()
    def plot_masks(self, batch: dict, path: Path) -> Path:
        """Log-magnitude spectrograms of the oracle vocals estimate with the linear mask (a)
        and with this model's Mel mask (b), over the 10 s of the track with the loudest
        vocals (the whole track if shorter); the first channel."""
        mixture, targets = batch["mixture"][:1], batch["targets"][:, :1]  # the first channel
        pair = self.vocals_pair(mixture, targets)[:, 0]
        mixture = mixture[0]
        vocals, accompaniment = self.spectrum(pair, center=True)
        mixture = self.spectrum(mixture, center=True)
        hop = self.stft_config.hop
        frames = min(mixture.shape[-1], round(FIGURE_SECONDS * self.rate / hop))
        energy = vocals.abs().square().sum(0).unfold(0, frames, 1).sum(-1)
        window = slice(int(energy.argmax()), int(energy.argmax()) + frames)
        vocals, accompaniment, mixture = (x[:, window] for x in (vocals, accompaniment, mixture))
        config = self.stft_config
        estimates = {
            f"{name} mask": oracle_vocals_mask(
                vocals, accompaniment, self.rate, bins, self.alpha, config.n_fft, config.keep_dc
            )
            * mixture
            for name, bins in (
                ("linear STFT", None),
                (f"Mel ({self.hparams.mel_bins} bins)", self.hparams.mel_bins),
            )
        }
        return oracle_masks_figure(estimates, self.rate, hop, path)

    def configure_optimizers(self) -> None:
        return None
