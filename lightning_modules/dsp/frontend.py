"""The Mel front end of thesis Section 5.2 (Fig. 5.4): the network sees the mixture's Mel
magnitudes (eq. 5.1) and estimates a Mel mask, which the filter bank's transpose interpolates
to linear bins (eq. 5.2) before it multiplies the mixture's linear STFT.
"""

from __future__ import annotations

from torch import Tensor, nn

from datamodules.conventions import N_FFT
from lightning_modules.dsp.spectral import linear_to_mel, mel_filterbank, mel_to_linear_mask


class MelFrontEnd(nn.Module):
    """``F_Mel`` (librosa, Slaney, peak 1) for the row's STFT (``n_fft``; the DC column dropped
    unless ``keep_dc``, so its columns are the spectrogram's bins) as a non-persistent buffer:
    it follows the model's device, and checkpoints do not carry a constant derived from
    ``(rate, n_mels, n_fft)``."""

    def __init__(self, rate: int, n_mels: int, n_fft: int = N_FFT, keep_dc: bool = False) -> None:
        super().__init__()
        if n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {n_mels}")
        self.n_mels = n_mels
        bank = mel_filterbank(rate, n_mels, n_fft, drop_dc=not keep_dc)
        self.register_buffer("filterbank", bank, persistent=False)

    def to_mel(self, magnitude: Tensor) -> Tensor:
        """``(..., F, T)`` linear magnitudes -> ``(..., n_mels, T)`` (eq. 5.1)."""
        return linear_to_mel(magnitude, self.filterbank)

    def to_linear_mask(self, mel_mask: Tensor) -> Tensor:
        """``(..., n_mels, T)`` Mel mask -> ``(..., F, T)`` linear mask (eq. 5.2)."""
        return mel_to_linear_mask(mel_mask, self.filterbank)
