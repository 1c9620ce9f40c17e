"""MagNet and PhaseNet (thesis 4.5.1, Fig. 4.9): a magnitude network and a small phase network
that exchange information before the PhaseNet's output block.

* **MagNet**: any magnitude network with 3 output maps (the baseline ``MMDenseNet`` with
  ``out_channels: 3, output_activation: none``): logits over the mask codebook
  M = {0, 1, R_max = 2}. Its output function is the codebook interpolation
  ``M_hat = sum_i softmax(logits)_i m_i`` in [0, 2], which the thesis calls a generalisation of
  the sigmoid (:class:`CodebookMask`).
* **PhaseNet**: an ``MDenseNet`` on the IF/GD features "operating on only 3 different scales,
  each with L = 3 and k = 4 and only 16 kernels in the input layer" (read as 3 resolutions,
  1, 1/2, 1/4: two down-samplings, 5 dense blocks), then an output dense block (k = 4, L = 2,
  not given by the thesis) on ``[U-Net output, log(M_hat + 1e-6)]`` and a biased 1x1 conv to P
  phase-class logits. The log ratio log(|S_hat| / |X|) = log(M_hat) is the MagNet's
  information for the PhaseNet ("the last densely connected output block of the PhaseNet gets
  the estimated target magnitude scaled by the mixture magnitude").
* **MagPhaseNet** holds both in every training stage, so each stage's checkpoint loads into the
  next; ``estimate_phase: false`` (the MagNet's own stage, and the "MagNet, IAM" row) leaves the
  PhaseNet unused and ``inference_net()`` is then the MagNet alone (what Parameters/MACs count);
  ``magnitude_to_phase: false`` feeds the PhaseNet zeros instead of the log ratio (its
  pre-training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from lightning_modules.nets.mmdensenet import DenseBlock, MDenseNet, kaiming_init_

#: log(M_hat + LOG_EPS): the suite's log floor (``separators.spectrogram.LOG_EPS``, equal by test).
LOG_EPS = 1e-6
#: The thesis's mask codebook M = {0, 1, R_max = 2}.
MASK_VALUES = (0.0, 1.0, 2.0)


class CodebookMask(nn.Module):
    """Mask from class logits ``(B, M, F, T)`` by interpolation over a codebook of mask values
    (the magnitude counterpart of eq. 4.4): ``sum_i softmax(logits)_i m_i``, ``(B, 1, F, T)``."""

    def __init__(self, values: Sequence[float] = MASK_VALUES) -> None:
        super().__init__()
        if len(values) < 2:
            raise ValueError(f"a mask codebook needs at least 2 values, got {list(values)}")
        self.register_buffer("values", torch.tensor([float(v) for v in values]), persistent=False)

    def forward(self, logits: Tensor) -> Tensor:
        return self.interpolate(torch.softmax(logits, dim=1))

    def interpolate(self, probabilities: Tensor) -> Tensor:
        """The mask for given class probabilities ``(B, M, F, T)``."""
        values = self.values.to(probabilities.dtype)[:, None, None]
        return (probabilities * values).sum(dim=1, keepdim=True)


class PhaseNet(nn.Module):
    """IF/GD features ``(B, features, F, T)`` and the MagNet's log ratio ``(B, 1, F, T)`` ->
    ``(B, classes, F, T)`` phase-class logits. ``scales`` down-samplings (2: resolutions 1, 1/2,
    1/4), every U-Net block ``growth_rate``/``layers``; the output block sees the U-Net's maps
    and the log ratio."""

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1
    results_components: ClassVar[tuple[type, ...]] = (MDenseNet,)

    def __init__(
        self,
        classes: int = 8,
        features: int = 2,
        scales: int = 2,
        growth_rate: int = 4,
        layers: int = 3,
        first_channels: int = 16,
        final_growth_rate: int = 4,
        final_layers: int = 2,
    ) -> None:
        super().__init__()
        blocks = 2 * scales + 1
        self.classes = classes
        self.unet = MDenseNet(
            features, (growth_rate,) * blocks, (layers,) * blocks, first_channels=first_channels
        )
        self.final_block = DenseBlock(self.unet.out_channels + 1, final_growth_rate, final_layers)
        self.output_conv = nn.Conv2d(final_growth_rate, classes, kernel_size=1, bias=True)
        kaiming_init_(self)

    def forward(self, features: Tensor, log_ratio: Tensor) -> Tensor:
        joined = torch.cat([self.unet(features), log_ratio], dim=1)
        return self.output_conv(self.final_block(joined))


class MagPhaseNet(nn.Module):
    """Both networks of Fig. 4.9. ``forward(magnitude (B, 1, F, T), features (B, 2, F, T))``
    gives ``{"mask": (B, 1, F, T) in [min m, max m], "phase_logits": (B, P, F, T)}`` (no
    ``phase_logits`` with ``estimate_phase: false``).

    Args:
        magnet: the magnitude network, ``(B, 1, F, T) -> (B, len(mask_values), F, T)`` logits.
        phasenet: the phase network (``PhaseNet``).
        mask_values: the mask codebook M.
        estimate_phase: whether the PhaseNet is used (false: the MagNet alone, mixture phase).
        magnitude_to_phase: the PhaseNet's second input is log(M_hat + 1e-6) (true) or zeros
            (its pre-training on the phase features alone).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        magnet: nn.Module,
        phasenet: PhaseNet,
        mask_values: Sequence[float] = MASK_VALUES,
        estimate_phase: bool = True,
        magnitude_to_phase: bool = True,
    ) -> None:
        super().__init__()
        self.magnet = magnet
        self.phasenet = phasenet
        self.codebook_mask = CodebookMask(mask_values)
        self.estimate_phase = estimate_phase
        self.magnitude_to_phase = magnitude_to_phase

    @property
    def max_mask(self) -> float:
        """R_max: the largest mask the codebook can give."""
        return float(self.codebook_mask.values.max())

    def mask(self, magnitude: Tensor) -> Tensor:
        """The MagNet's mask ``(B, 1, F, T)`` for a mixture magnitude ``(B, 1, F, T)``."""
        return self.codebook_mask(self.magnet(magnitude))

    def phase_logits(self, features: Tensor, mask: Tensor | None) -> Tensor:
        """The PhaseNet's class logits; ``mask`` is ignored (zeros fed instead) without
        ``magnitude_to_phase``."""
        if self.magnitude_to_phase:
            if mask is None:
                raise ValueError("magnitude_to_phase needs the MagNet's mask")
            log_ratio = torch.log(mask + LOG_EPS)
        else:
            log_ratio = features.new_zeros(features.shape[0], 1, *features.shape[2:])
        return self.phasenet(features, log_ratio)

    def forward(self, magnitude: Tensor, features: Tensor) -> dict[str, Tensor]:
        mask = self.mask(magnitude)
        if not self.estimate_phase:
            return {"mask": mask}
        return {"mask": mask, "phase_logits": self.phase_logits(features, mask)}

    def inference_net(self) -> nn.Module:
        """What runs at inference: both networks, or the MagNet alone without the PhaseNet."""
        return self if self.estimate_phase else self.magnet

    def example_inputs(self, frames: int, bins: int, channels: int = 1) -> tuple[Tensor, Tensor]:
        """A mixture magnitude and its two phase features, for counting MACs."""
        return torch.zeros(1, channels, bins, frames), torch.zeros(1, 2, bins, frames)
