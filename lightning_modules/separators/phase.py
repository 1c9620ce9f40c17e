"""MagNet + PhaseNet (thesis 4.5.1, Table 4.11): the target's phase estimated as a
classification over a phase-offset codebook, trained in bootstrapping stages.

The estimate is S_hat = M_hat |X| e^{i (angle X + phi_hat)}: the MagNet's codebook mask M_hat
in [0, 2] (trained on the ideal amplitude mask |S| / |X|) times the mixture magnitude, with the
mixture phase turned by the PhaseNet's interpolated offset phi_hat (eq. 4.4 over the codebook
-pi + 2 pi i / 8; offset 0 keeps the mixture phase). The PhaseNet sees the mixture's IF/GD
features (``dsp.phase.phase_features``), which carry no absolute phase, so its classes encode
the offset angle S - angle X rather than angle S itself (spec reading C3); its losses compare
the estimated phase with angle S either way.

``loss`` picks the stage (spec 2.4) and with it which network trains:

=========  ==========  ==============================================================
loss       trains      value
=========  ==========  ==============================================================
iam        MagNet      MSE(M_hat, clip(|S| / |X|, 0, R_max)); mixture phase at test
phase      PhaseNet    mean |e^{i phi_hat_S} - e^{i angle S}|^2 (MagNet frozen)
cmse       both        L_cMSE = mean |S_hat - S|^2
total      both        L_tot = 0.1 L_cMSE + 0.2 L_l1 + 0.7 L_wSDR (eq. 4.5)
=========  ==========  ==============================================================

A frozen network gets no gradients, no optimiser entries and keeps its BatchNorm in eval
mode (its running statistics stay those of its own stage). Time-domain losses invert the
chunk's non-centred STFT on the samples all frames cover (``dsp.phase.overlap_add``), the
references through the same STFT and inverse. Full tracks are separated as every other model
(centred STFT, blocks of the test context, iSTFT), the phase features computed on the whole
track.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.dsp.phase import (
    interpolate_phasor,
    overlap_add,
    phase_codebook,
    phase_features,
)
from lightning_modules.dsp.spectral import ideal_amplitude_mask
from lightning_modules.separators.phase_losses import (
    TOTAL_WEIGHTS,
    complex_mse,
    l1_loss,
    phasor_mse,
    weighted_sdr_loss,
)
from lightning_modules.separators.spectrogram import (
    SpectrogramSeparator,
    in_blocks,
    thesis_layout_only,
)

#: Which network each loss trains.
TRAINS = {"iam": ("magnet",), "phase": ("phasenet",), "cmse": ("magnet", "phasenet")}
TRAINS["total"] = TRAINS["cmse"]
LOSSES = tuple(TRAINS)
#: SpectrogramSeparator options this module does not use: they must keep their defaults.
UNUSED_OPTIONS = {
    "objective": "spectrogram",
    "input_scale": "linear",
    "output_scale": "linear",
    "normalize_input": False,
    "mel_bins": None,
    "pruning": None,
}


class MagPhaseSeparator(SpectrogramSeparator):
    """MagNet + PhaseNet of one ``nets.phasenet.MagPhaseNet``.

    Args:
        net: a ``MagPhaseNet`` (its ``estimate_phase`` must be false exactly for ``loss:
            iam``, whose rows are tested with the mixture phase).
        loss: "iam", "phase", "cmse" or "total" (the table above).
        phase_classes: P, the size of the uniform phase-offset codebook.
        Other arguments as ``SpectrogramSeparator`` (the thesis's mono vocals model; its
        objective, scale, normalisation, Mel and pruning options are not used).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(self, net: nn.Module, loss: str = "total", phase_classes: int = 8, **kwargs):
        thesis_layout_only("MagPhaseSeparator", kwargs)
        for option, default in UNUSED_OPTIONS.items():
            if kwargs.get(option, default) != default:
                raise ValueError(
                    f"MagPhaseSeparator does not use model.init_args.{option} "
                    f"(got {kwargs[option]!r})"
                )
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not all(hasattr(net, part) for part in ("magnet", "phasenet", "estimate_phase")):
            raise ValueError(
                f"MagPhaseSeparator needs a nets.phasenet.MagPhaseNet, got {type(net).__name__}"
            )
        if net.estimate_phase != (loss != "iam"):
            raise ValueError(
                f"loss {loss!r} needs net.init_args.estimate_phase: {loss != 'iam'} (the MagNet "
                "alone is trained and tested with the mixture phase; every other loss uses "
                "the PhaseNet)"
            )
        if net.phasenet.classes != phase_classes:
            raise ValueError(
                f"the PhaseNet has {net.phasenet.classes} classes, phase_classes is {phase_classes}"
            )
        super().__init__(net, **kwargs)
        if self.target_index != 0:
            raise ValueError("MagPhaseSeparator estimates the vocals (target: vocals)")
        self.loss = loss
        self.register_buffer("codebook", phase_codebook(phase_classes), persistent=False)
        for name in ("magnet", "phasenet"):
            if name not in TRAINS[loss]:
                getattr(net, name).requires_grad_(False)

    @property
    def frozen(self) -> list[nn.Module]:
        """The networks this stage does not train."""
        return [getattr(self.net, n) for n in ("magnet", "phasenet") if n not in TRAINS[self.loss]]

    def train(self, mode: bool = True) -> MagPhaseSeparator:
        """Frozen networks stay in eval mode: their BatchNorm statistics do not move."""
        super().train(mode)
        for net in self.frozen:
            net.eval()
        return self

    # -- the estimate ---------------------------------------------------------------------

    def features(self, spectrum: torch.Tensor) -> torch.Tensor:
        """(B, 2, F, T) IF/GD features of a (B, F, T) complex STFT with the row's framing."""
        config = self.stft_config
        return phase_features(spectrum, config.n_fft, config.hop, config.keep_dc)

    def forward(self, magnitude: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, F, T) mixture magnitude and (B, 2, F, T) features -> "mask" (B, F, T) and, when
        the PhaseNet is used, "offset" (B, F, T): the unit phasor of the phase offset. The
        PhaseNet's pre-training does not run the MagNet (its input there is zeros)."""
        net = self.net
        pretraining = self.training and not net.magnitude_to_phase
        mask = None if pretraining else net.mask(magnitude.unsqueeze(1))
        out = {} if mask is None else {"mask": mask[:, 0]}
        if net.estimate_phase:
            probabilities = torch.softmax(net.phase_logits(features, mask), dim=1)
            out["offset"] = interpolate_phasor(probabilities, self.codebook)
        return out

    def estimate(self, out: dict[str, torch.Tensor], mixture: torch.Tensor) -> torch.Tensor:
        """S_hat from the outputs and the complex mixture STFT."""
        phase = torch.exp(1j * mixture.angle())
        if "offset" in out:
            phase = phase * out["offset"]
        return out["mask"] * mixture.abs() * phase

    def chunk_loss(
        self, out: dict[str, torch.Tensor], mixture: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """This stage's loss from the outputs and complex (B, F, T) mixture/target STFTs."""
        if self.loss == "iam":
            oracle = ideal_amplitude_mask(target, mixture).clamp(0.0, self.net.max_mask)
            return F.mse_loss(out["mask"], oracle)
        if self.loss == "phase":
            return phasor_mse(torch.exp(1j * mixture.angle()) * out["offset"], target)
        estimate = self.estimate(out, mixture)
        cmse = complex_mse(estimate, target)
        if self.loss == "cmse":
            return cmse
        config = self.stft_config
        kwargs = {"window": config.window, "keep_dc": config.keep_dc}
        inverse = overlap_add(
            torch.stack([estimate, target, mixture]), config.n_fft, config.hop, **kwargs
        )
        s_hat, s, x = inverse.unbind(0)
        return (
            TOTAL_WEIGHTS["cmse"] * cmse
            + TOTAL_WEIGHTS["l1"] * l1_loss(s_hat, s)
            + TOTAL_WEIGHTS["wsdr"] * weighted_sdr_loss(x, s, s_hat)
        )

    def training_loss(self, batch: dict) -> torch.Tensor:
        mixture, target = self.spectrum(self._mix(batch)), self.spectrum(self._target(batch))
        return self.chunk_loss(self(mixture.abs(), self.features(mixture)), mixture, target)

    def _separate(self, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-track estimate of a (T,) or (1, T) mixture: ((3, F, frames) mask and offset
        phasor as real and imaginary parts, mixture STFT, waveform)."""
        if mixture.dim() == 2:
            output, spectrum, waveform = self._separate(mixture[0])
            return output[None], spectrum[None], waveform[None]
        spectrum = self.spectrum(mixture, center=True)
        inputs = torch.cat([spectrum.abs()[None], self.features(spectrum)])  # (3, F, frames)

        def block(x: torch.Tensor) -> torch.Tensor:
            out = self(x[:, 0], x[:, 1:])
            offset = out.get("offset", torch.ones_like(out["mask"], dtype=spectrum.dtype))
            return torch.stack([out["mask"], offset.real, offset.imag], dim=1)

        output = in_blocks(block, inputs, self.test_context, self.hparams.blocks_per_batch)
        out = {"mask": output[0]}
        if self.net.estimate_phase:
            out["offset"] = torch.complex(output[1], output[2])
        waveform = self.waveform(self.estimate(out, spectrum), length=mixture.shape[-1])
        return output, spectrum, waveform

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Full-track separation and museval (no "Loss" column: Table 4.11 has none)."""
        self.check_test_batch(batch)
        self.submit_for_evaluation(batch, self.separate(batch["mixture"], batch["targets"]))
