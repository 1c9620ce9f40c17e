"""The three per-frame models of the DAE mapping-functions paper (Mimilakis et al., spec
dae-nca.md A.2): a 2-layer denoising autoencoder (``DAE``), its 4-layer multi-layer-encoder
extension (``MSSDAE``) and the 2-layer DAE with a skip-filtering connection
(``SkipFilteringDAE``).

Every layer is a fully connected N -> N map followed by a ReLU ("the dimensionality through
the layers is preserved the same"); weights Xavier normal, biases zero (the paper's text; the
authors' public classes leave PyTorch's bias init). Each frame is an independent example.

Interface used by the neural couplings algorithm (``separators.dae``): ``layers`` (the ordered
``nn.Linear``, encoder first), ``last_layer_output(x)`` (the vocals estimate for DAE and MSS-DAE,
the mask for SF) and ``estimate(x)`` (the vocals estimate), all on frames (..., N).
``forward`` takes the suite's spectrogram layout (B, 1, F, T) and returns the vocals estimate
in the same layout. Plain modules, free of training logic.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

__all__ = ["DAE", "MSSDAE", "FrameDAE", "SkipFilteringDAE"]


class FrameDAE(nn.Module):
    """``n_layers`` fully connected N -> N layers, each followed by a ReLU; with
    ``skip_filtering`` the last layer's output is a mask that multiplies the input frame.

    Args:
        bins: N, the frequency bins of one magnitude frame (n_fft / 2 + 1 with the DC bin).
        n_layers: encoder, hidden and decoder layers together (DAE, SF: 2; MSS-DAE: 4).
        skip_filtering: y = x * m (SF) instead of y = m.
    """

    # Versioned through its three subclasses (the classes configs name): a change here bumps
    # each of theirs.
    in_channels: int = 1
    out_channels: int = 1

    def __init__(self, bins: int, n_layers: int = 2, skip_filtering: bool = False) -> None:
        super().__init__()
        if bins < 1 or n_layers < 1:
            raise ValueError(f"bins={bins} and n_layers={n_layers} must be >= 1")
        self.bins = bins
        self.skip_filtering = skip_filtering
        self.layers = nn.ModuleList(nn.Linear(bins, bins) for _ in range(n_layers))
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def last_layer_output(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output after its ReLU, (..., N) from frames (..., N): the vocals
        estimate (DAE, MSS-DAE) or the mask (SF), what the NCA approximates."""
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        """The vocals estimate of frames (..., N)."""
        out = self.last_layer_output(x)
        return x * out if self.skip_filtering else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) normalised mixture magnitude -> (B, 1, F, T) vocals estimate, frame by
        frame."""
        if x.shape[-2] != self.bins:
            raise ValueError(
                f"{type(self).__name__} has {self.bins} bins; the input has {x.shape[-2]} "
                "(net.init_args.bins must be data.stft n_fft // 2 + 1 with keep_dc)"
            )
        return self.estimate(x.transpose(-1, -2)).transpose(-1, -2)


class DAE(FrameDAE):
    """The DAE: one encoding and one decoding layer (eqs. 4-5)."""

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(self, bins: int) -> None:
        super().__init__(bins, n_layers=2)


class MSSDAE(FrameDAE):
    """The MSS-DAE: encoder, two hidden layers, decoder (4 layers, eqs. 6-7)."""

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(self, bins: int) -> None:
        super().__init__(bins, n_layers=4)


class SkipFilteringDAE(FrameDAE):
    """SF: the DAE's two layers, output = input * ReLU mask (eqs. 8-9; the mask is unbounded,
    not a sigmoid)."""

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(self, bins: int) -> None:
        super().__init__(bins, n_layers=2, skip_filtering=True)
