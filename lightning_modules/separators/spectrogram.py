"""Spectrogram approximation: the thesis's baseline objective (section 3.3.3).

The network maps the mixture's linear magnitude spectrogram (DC bin dropped) to the target's,
trained with MSE. At test time the estimated magnitude takes the mixture's phase.
Later objectives (masks, multi-task heads, deep clustering) subclass this module and override
``training_loss`` and/or ``estimate_magnitude``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from datamodules.conventions import N_FFT, targets_from_sources
from lightning_modules.dsp.frontend import MelFrontEnd
from lightning_modules.dsp.spectral import (
    istft,
    stft,
    truncated_phase_sensitive_mask,
    wiener_like_mask,
)
from lightning_modules.nets.pruning import add_psp, structure_parameters
from lightning_modules.separators.psp import PSPConfig, ThresholdSchedule
from lightning_modules.separators.separator import Separator, split_decay_groups


def in_blocks(
    estimate: Callable[[torch.Tensor], torch.Tensor],
    magnitude: torch.Tensor,
    context: int,
    blocks_per_batch: int = 16,
) -> torch.Tensor:
    """Apply ``estimate`` ((B, F, context) -> (B, F', context)) to a (F, T) spectrogram in
    consecutive blocks of ``context`` frames; the last block is zero-padded. Returns (F', T):
    a Mel front end's output has fewer bins than its input."""
    bins, frames = magnitude.shape
    n_blocks = -(-frames // context)
    padded = F.pad(magnitude, (0, n_blocks * context - frames))
    blocks = padded.reshape(bins, n_blocks, context).permute(1, 0, 2)
    out = torch.cat([estimate(b) for b in blocks.split(blocks_per_batch)])
    return out.permute(1, 0, 2).reshape(out.shape[1], n_blocks * context)[:, :frames]


def framewise_snr(
    reference: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-9
) -> torch.Tensor:
    """10 log10(|s|^2 / |s - s_hat|^2) over the last axis. museval v4's SDR of a window is
    exactly this (its distortion filters only enter ISR/SIR/SAR), so it is a cheap validation
    SDR. Not torchmetrics' SignalDistortionRatio, which fits a filter first."""
    signal = reference.pow(2).sum(-1)
    error = (reference - estimate).pow(2).sum(-1)
    return 10 * torch.log10((signal + eps) / (error + eps))


class ChunkMedian(Metric):
    """Median of one value per validation chunk over the whole validation set (``val/sdr``),
    the same on every rank: the values of all ranks are gathered; a chunk that the distributed
    sampler repeated to give every rank as many chunks counts once (by its ``index`` in the
    validation set; values given without one all count); NaN values (chunks with silent
    vocals) are left out, and the median averages the two middle values, as numpy and museval
    do (``torch.nanmedian`` would return the lower one). NaN when there is no value."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, values: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        values = values.detach().flatten()
        if indices is None:
            indices = torch.full(values.shape, -1, device=values.device)
        self.values.append(values)
        self.indices.append(indices.flatten().to(device=values.device, dtype=torch.long))

    def compute(self) -> torch.Tensor:
        values, indices = dim_zero_cat(self.values), dim_zero_cat(self.indices).long()
        order = indices.argsort(stable=True)
        values, indices = values[order], indices[order]
        repeated = torch.zeros_like(indices, dtype=torch.bool)
        repeated[1:] = (indices[1:] == indices[:-1]) & (indices[1:] >= 0)
        return values[~repeated].nanquantile(0.5)


#: What the network's output is trained to be (thesis 3.3.3 and 4.2):
#: "spectrogram": the target's magnitude (spectrogram approximation, SA);
#: "mask": an oracle mask of the target, ``mask`` = "wf" or "tps" (mask approximation, MA);
#: "learned_mask": a mask that, multiplied with the mixture, approximates the target's
#: magnitude (the network learns its own mask, trained as SA).
OBJECTIVES = ("spectrogram", "mask", "learned_mask")
MASKS = ("wf", "tps")
#: Magnitude scales of the network's input and output (thesis 4.1.4, Table 4.4).
SCALES = ("linear", "log")
LOG_EPS = 1e-6  # log(|X| + eps): silent bins map to about -13.8 instead of -inf


def to_scale(magnitude: torch.Tensor, scale: str) -> torch.Tensor:
    return torch.log(magnitude + LOG_EPS) if scale == "log" else magnitude


def input_statistics(
    mixtures: list[torch.Tensor], scale: str = "linear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frequency mean and standard deviation of the mixtures' magnitudes in the network's
    input scale (thesis 4.1.5: computed on the training mixtures only and kept fixed)."""
    total = squares = count = 0
    for mixture in mixtures:
        magnitude = to_scale(stft(mixture).abs(), scale).double()
        total = total + magnitude.sum(dim=-1)
        squares = squares + magnitude.square().sum(dim=-1)
        count += magnitude.shape[-1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.clamp_min(1e-8).float()


class SpectrogramSeparator(Separator):
    """Magnitude-domain separation of one target with the thesis's training recipe.

    Args:
        net: the network, (B, 1, F, T) -> (B, 1, F, T) or a dict of heads with "main"
            (e.g. ``lightning_modules.nets.MMDenseNet``, ``MultiHeadMMDenseNet``).
        target: which target of the batch the network estimates ("vocals" is index 0).
        objective: see ``OBJECTIVES``; mask objectives want a sigmoid output function.
        mask: the oracle mask of the "mask" objective: Wiener filter ("wf", alpha 2) or
            truncated phase-sensitive ("tps").
        input_scale, output_scale: "linear" or "log" magnitudes (Table 4.4). A log output is
            trained against log targets; for mask objectives it is converted to the linear
            scale before the sigmoid, as the thesis does (use ``output_activation: none``).
        normalize_input: per-frequency mean/variance normalisation of the input with training
            mixture statistics, and a learnable per-frequency gain and bias on the output
            (Table 4.5).
        lr, eps, weight_decay: AdamW of thesis Table 3.1.
        plateau_factor, plateau_patience: ReduceLROnPlateau on the validation loss (the thesis
            gives the factor 0.1, not the patience; 10 is torch's default).
        blocks_per_batch: test-time blocks of ``context_frames`` per forward pass.
        mel_bins: None (linear front end) or the number of Mel filters of the Mel front end
            (thesis 5.2): the network sees Mel magnitudes and outputs a Mel mask, interpolated
            to linear bins before it multiplies the mixture. Needs a mask objective: "mask"
            trains on Wiener-like masks of the true Mel spectrograms (WF-MA, Table 5.4),
            "learned_mask" on the linear magnitudes through the interpolated mask (the SA
            re-training of Table 5.5).
        test_context_frames, test_only: see ``Separator``.
        pruning: Parameterized Structured Pruning (thesis 5.4, ``PSPConfig``): structure
            parameters on the network's input channels, their own AdamW group, and the
            threshold schedule as a callback of this module (so profiles that replace the
            trainer's callbacks keep it). Checkpoints hold the structure parameters and the
            threshold; ``nets.pruning.remove_pruned_channels(model.net)`` gives the small model.
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        net: nn.Module,
        target: str = "vocals",
        objective: str = "spectrogram",
        mask: str = "wf",
        input_scale: str = "linear",
        output_scale: str = "linear",
        normalize_input: bool = False,
        lr: float = 2e-3,
        eps: float = 1e-6,
        weight_decay: float = 1e-5,
        plateau_factor: float = 0.1,
        plateau_patience: int = 10,
        blocks_per_batch: int = 16,
        rate: int = 32000,
        context_frames: int = 64,
        eval_workers: int = 2,
        init_from: str | None = None,
        mel_bins: int | None = None,
        test_context_frames: int | None = None,
        test_only: bool = False,
        pruning: PSPConfig | None = None,
    ) -> None:
        super().__init__(
            rate, context_frames, eval_workers, init_from, test_context_frames, test_only
        )
        with warnings.catch_warnings():
            # The network is injected as an nn.Module; LightningCLI stores its config in the
            # checkpoint (that is how checkpoints are reloaded), so Lightning's advice to
            # ignore it does not apply.
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of")
            self.save_hyperparameters()
        if objective not in OBJECTIVES or mask not in MASKS:
            raise ValueError(
                f"objective must be one of {OBJECTIVES} and mask one of {MASKS}, "
                f"got objective={objective!r}, mask={mask!r}"
            )
        if input_scale not in SCALES or output_scale not in SCALES:
            raise ValueError(f"scales must be one of {SCALES}: {input_scale!r}, {output_scale!r}")
        self.front_end: MelFrontEnd | None = None
        if mel_bins is not None:
            if objective == "spectrogram" or mask != "wf" or normalize_input:
                # A Mel spectrogram cannot be interpolated back well, nor is there a Mel phase
                # for a phase-sensitive mask (thesis 5.2); statistics are per linear bin.
                raise ValueError(
                    "a Mel front end (mel_bins) estimates a Wiener-like Mel mask: use objective "
                    "'mask' (mask 'wf') or 'learned_mask', without normalize_input; got "
                    f"objective={objective!r}, mask={mask!r}, normalize_input={normalize_input}"
                )
            self.front_end = MelFrontEnd(rate, mel_bins)
        self.net = net
        self.pruning = pruning
        if pruning is not None:
            add_psp(net, include_transposed=pruning.include_transposed, gradient=pruning.gradient)
        self.target_index = {"vocals": 0, "accompaniment": 1}[target]
        if normalize_input:
            bins = N_FFT // 2
            self.register_buffer("input_mean", torch.zeros(bins))
            self.register_buffer("input_std", torch.ones(bins))
            self.output_gain = nn.Parameter(torch.ones(bins))
            self.output_bias = nn.Parameter(torch.zeros(bins))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.normalize_input:
            train = self.trainer.datamodule.splits["train"]
            mixtures = [
                torch.from_numpy(train.track(i).sum(axis=0)) for i in range(len(train.names))
            ]
            mean, std = input_statistics(mixtures, self.hparams.input_scale)
            self.input_mean.copy_(mean)
            self.input_std.copy_(std)
            with torch.no_grad():  # the output function's non-negative output, rescaled
                self.output_gain.copy_(std)
                self.output_bias.zero_()
        super().setup(stage)  # an init_from checkpoint, then a resumed run's own, win

    def heads(
        self, magnitude: torch.Tensor, net: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        """Every output of the network (or of ``net``, a part of it) for a (B, F, T) mixture
        magnitude: "main" (B, F, T), and for multi-head networks "second" (B, F, T) and
        "embedding" (B, K, F, T)."""
        x = to_scale(self.analysis(magnitude), self.hparams.input_scale)
        if self.hparams.normalize_input:
            x = (x - self.input_mean[:, None]) / self.input_std[:, None]
        out = (net or self.net)(x.unsqueeze(1))
        out = out if isinstance(out, dict) else {"main": out}
        out = {k: v if k == "embedding" else v.squeeze(1) for k, v in out.items()}
        if self.hparams.normalize_input:
            out["main"] = out["main"] * self.output_gain[:, None] + self.output_bias[:, None]
        return out

    def analysis(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Linear magnitudes (..., F, T) on the network's frequency scale: Mel (eq. 5.1) with
        a Mel front end, unchanged otherwise. Oracle masks and clustering labels use it too."""
        return magnitude if self.front_end is None else self.front_end.to_mel(magnitude)

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        """(B, F, T) mixture magnitude -> (B, F, T) raw output of the main head. Outside
        training, training-only heads are not computed (``inference_net`` of multi-head nets)."""
        if self.training or not hasattr(self.net, "inference_net"):
            return self.heads(magnitude)["main"]
        return self.heads(magnitude, self.net.inference_net())["main"]

    def mask_from_output(self, output: torch.Tensor) -> torch.Tensor:
        """A log-scaled output is converted to the linear scale before the sigmoid (Table 4.4's
        caption); a linear one already went through the network's output function. With a Mel
        front end this is the Mel mask; ``linear_mask`` interpolates it."""
        return torch.sigmoid(torch.exp(output)) if self.hparams.output_scale == "log" else output

    def linear_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask on the network's scale -> on linear bins (eq. 5.2 for a Mel front end)."""
        return mask if self.front_end is None else self.front_end.to_linear_mask(mask)

    def magnitude_from_output(self, output: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """The target's linear magnitude implied by an output: |output| for spectrograms
        (thesis 4.1.2: negative bins of an unconstrained output are mirrored), exp(output) for
        log spectrograms, mask x mixture for masks."""
        if self.hparams.objective != "spectrogram":
            return self.linear_mask(self.mask_from_output(output)) * mixture
        if self.hparams.output_scale == "log":
            return (torch.exp(output) - LOG_EPS).clamp_min(0)
        return output.abs()

    def estimate_magnitude(self, mixture_magnitude: torch.Tensor) -> torch.Tensor:
        return self.magnitude_from_output(self(mixture_magnitude), mixture_magnitude)

    def oracle_mask(self, target: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """The mask-approximation target from complex STFTs of target and mixture; with a Mel
        front end the Wiener-like mask of the true Mel spectrograms (thesis 5.2.2)."""
        if self.hparams.mask == "tps":
            return truncated_phase_sensitive_mask(target, mixture)
        magnitudes = self.analysis(torch.stack([target.abs(), (mixture - target).abs()], dim=-3))
        return wiener_like_mask(magnitudes, alpha=2.0)[..., 0, :, :]

    def objective_loss(
        self, output: torch.Tensor, mixture: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """MSE of the objective, from the raw output and complex mixture/target STFTs."""
        if self.hparams.objective == "mask":
            return F.mse_loss(self.mask_from_output(output), self.oracle_mask(target, mixture))
        scale = self.hparams.output_scale
        if self.hparams.objective == "spectrogram":
            # The raw output is compared (log|S| for a log output): negative bins of an
            # output without output function are mirrored only for reconstruction (thesis
            # 4.1.2), so "none" and "abs" are different models (Table 4.2).
            return F.mse_loss(output, to_scale(target.abs(), scale))
        estimate = self.magnitude_from_output(output, mixture.abs())
        return F.mse_loss(to_scale(estimate, scale), to_scale(target.abs(), scale))

    def _target(self, batch: dict) -> torch.Tensor:
        # (vocals, accompaniment = everything but the vocals), whatever target set the batch has
        return targets_from_sources(batch["targets"], "vocals")[:, self.target_index]

    def training_loss(self, batch: dict) -> torch.Tensor:
        mixture, target = stft(batch["mixture"]), stft(self._target(batch))
        return self.objective_loss(self(mixture.abs()), mixture, target)

    def _checked(self, loss: torch.Tensor, stage: str, batch_idx: int) -> torch.Tensor:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{stage} loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx} "
                f"(global step {self.global_step}); the run stops here and is not marked finished"
            )
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._checked(self.training_loss(batch), "training", batch_idx)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._checked(self.training_loss(batch), "validation", batch_idx)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        if self.target_index == 0:
            # A second forward pass, on purpose: val/sdr separates the chunk as the test does
            # (centred STFT, blocks of the test context, iSTFT), which the loss's pass over
            # the chunk's own frames cannot give back; deriving it from that pass would
            # change every val/sdr (pinned in tests/results_fingerprints.json).
            estimate = torch.stack([self.separate_vocals(m) for m in batch["mixture"]])
            reference = batch["targets"][:, 0]
            snr = framewise_snr(reference, estimate)
            # As museval does for its frames: a chunk with silent vocals has no SDR (NaN).
            silent = reference.abs().amax(dim=-1) == 0
            self._val_sdr.update(torch.where(silent, torch.nan, snr), batch.get("index"))

    def on_validation_epoch_start(self) -> None:
        # Not a child module (set through __dict__): the model's module tree, its state_dict
        # and what export traces stay the network's.
        self.__dict__["_val_sdr"] = ChunkMedian().to(self.device)

    def on_validation_epoch_end(self) -> None:
        """``val/sdr``: median over validation chunks, as museval's per-track median."""
        if self.target_index != 0 or self._val_sdr.update_count == 0:
            return
        median = self._val_sdr.compute()  # gathered from every rank: the same value on each
        if not median.isnan():
            # Equal on every rank already: "max" keeps it exact where a mean could round.
            self.log("val/sdr", median, prog_bar=True, sync_dist=True, reduce_fx="max")

    def _separate(self, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-track estimate of the target: (raw output (F, frames), mixture STFT, waveform)."""
        spectrum = stft(mixture, center=True)
        output = in_blocks(self, spectrum.abs(), self.test_context, self.hparams.blocks_per_batch)
        magnitude = self.magnitude_from_output(output, spectrum.abs())
        waveform = istft(magnitude * torch.exp(1j * spectrum.angle()), length=mixture.shape[-1])
        return output, spectrum, waveform

    def _to_vocals(self, target: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        return target if self.target_index == 0 else mixture - target

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._to_vocals(self._separate(mixture)[2], mixture)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Full-track separation, the objective on the whole track (the "Loss" column of
        Tables 4.1-4.3, averaged over tracks), then museval in the background."""
        self.check_test_batch(batch)
        output, spectrum, target = self._separate(batch["mixture"])
        reference = self._target({"targets": batch["targets"][None]})[0]
        loss = self.objective_loss(output, spectrum, stft(reference, center=True))
        self.log("test/loss", loss, batch_size=1, sync_dist=True)
        self.submit_for_evaluation(batch, self._to_vocals(target, batch["mixture"]))

    def parameter_groups(self) -> list[dict]:
        """Thesis 3.3.4's AdamW groups, plus PSP's structure parameters with their own
        (decoupled) weight decay, thesis 5.4.2."""
        if self.pruning is None:
            return split_decay_groups(self, self.hparams.weight_decay)
        alphas = structure_parameters(self.net)
        groups = split_decay_groups(self, self.hparams.weight_decay, exclude=alphas)
        return [*groups, {"params": alphas, "weight_decay": self.pruning.weight_decay}]

    def configure_callbacks(self) -> list[Callback]:
        return [] if self.pruning is None else [ThresholdSchedule(self.pruning)]

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(
            self.parameter_groups(),
            lr=self.hparams.lr,
            eps=self.hparams.eps,
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=self.hparams.plateau_factor, patience=self.hparams.plateau_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
        }
