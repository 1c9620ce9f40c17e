"""Spectrogram approximation: the thesis's baseline objective (section 3.3.3).

The network maps the mixture's linear magnitude spectrogram (DC bin dropped) to the target's,
trained with MSE. At test time the estimated magnitude takes the mixture's phase.
Later objectives (masks, multi-task heads, deep clustering) subclass this module and override
``training_loss`` and/or ``estimate_magnitude``.

Beyond the thesis (issue #11): the row's STFT (``stft``), stereo input (the network gets
``in_channels`` = C), and ``multi_target``: one network estimating every target of the data's
target set at once, N x C output maps read as (N, C) masks or magnitudes, trained with the
objective's MSE averaged over targets, channels, bins and frames. The thesis's single-target
models run exactly the code they ran (mono spectrograms (B, F, T)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from datamodules.conventions import SOURCES, STFTConfig
from lightning_modules.dsp.frontend import MelFrontEnd
from lightning_modules.dsp.spectral import (
    stft,
    truncated_phase_sensitive_mask,
    wiener_like_mask,
)
from lightning_modules.nets.pruning import add_psp, structure_parameters
from lightning_modules.separators.psp import PSPConfig, ThresholdSchedule
from lightning_modules.separators.separator import VOCALS_PAIR, Separator, split_decay_groups


def in_blocks(
    estimate: Callable[[torch.Tensor], torch.Tensor],
    magnitude: torch.Tensor,
    context: int,
    blocks_per_batch: int = 16,
) -> torch.Tensor:
    """Apply ``estimate`` ((B, ..., F, context) -> (B, ...', F', context)) to a (..., F, T)
    spectrogram in consecutive blocks of ``context`` frames; the last block is zero-padded.
    Returns (...', F', T): a Mel front end's output has fewer bins than its input, a stereo
    input (C, F, T) keeps its channels, a multi-target output gains a target axis."""
    bins, frames = magnitude.shape[-2:]
    n_blocks = -(-frames // context)
    padded = F.pad(magnitude, (0, n_blocks * context - frames))
    blocks = padded.reshape(*magnitude.shape[:-2], bins, n_blocks, context).movedim(-2, 0)
    out = torch.cat([estimate(b) for b in blocks.split(blocks_per_batch)])
    out = out.movedim(0, -2)
    return out.reshape(*out.shape[:-2], n_blocks * context)[..., :frames]


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
    mixtures: list[torch.Tensor],
    scale: str = "linear",
    spectrum: Callable[[torch.Tensor], torch.Tensor] = stft,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frequency mean and standard deviation of the mixtures' magnitudes in the network's
    input scale (thesis 4.1.5: computed on the training mixtures only and kept fixed). A
    mixture is (T,) or (C, T); the channels are pooled. ``spectrum``: the row's STFT."""
    total = squares = count = 0
    for mixture in mixtures:
        magnitude = to_scale(spectrum(mixture).abs(), scale).double()
        if magnitude.dim() > 2:  # channels pooled with the frames
            magnitude = magnitude.transpose(0, -2).reshape(magnitude.shape[-2], -1)
        total = total + magnitude.sum(dim=-1)
        squares = squares + magnitude.square().sum(dim=-1)
        count += magnitude.shape[-1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.clamp_min(1e-8).float()


def thesis_layout_only(name: str, options: dict) -> None:
    """Refuse, before anything is built, what a thesis-only subclass cannot do: several
    channels or several targets (its heads and losses are built for one mono target)."""
    if options.get("multi_target") or options.get("channels", 1) != 1:
        raise ValueError(
            f"{name} is the thesis's mono single-target model: data.channels 2 and "
            "multi_target are not supported"
        )


def net_channels(net: nn.Module) -> tuple[int, int] | None:
    """(in, out) channels of a network that declares them (``MMDenseNet``, and a multi-head
    net through its main MMDenseNet); None for others."""
    for candidate in (net, getattr(net, "main", None)):
        if hasattr(candidate, "in_channels") and hasattr(candidate, "out_channels"):
            return int(candidate.in_channels), int(candidate.out_channels)
    return None


class SpectrogramSeparator(Separator):
    """Magnitude-domain separation of one target with the thesis's training recipe, or of
    every target of the data's target set (``multi_target``).

    Args:
        net: the network, (B, C, F, T) -> (B, C, F, T) or a dict of heads with "main"
            (e.g. ``lightning_modules.nets.MMDenseNet``, ``MultiHeadMMDenseNet``); with
            ``multi_target``, (B, C, F, T) -> (B, N x C, F, T), maps ordered target-major
            (target n, channel c at n x C + c): ``MMDenseNet(in_channels=C, out_channels=N*C)``.
        target: which target the network estimates, "vocals" or "accompaniment" (the thesis;
            not used with ``multi_target``).
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
        multi_target: the network estimates every target of ``targets`` (N of them) at once:
            N masks (objective "mask": Wiener-like masks of the N targets, plus the rest of
            the mixture where the set does not cover it, or TPS masks; "learned_mask") or N
            magnitudes ("spectrogram"), each with the mixture's phase; the loss is the
            objective's MSE averaged over the targets (and channels, bins, frames). The test
            evaluates the N estimates together.
        stft, channels, targets: see ``Separator`` (linked from the data).
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
        multi_target: bool = False,
        stft: STFTConfig | None = None,
        channels: int = 1,
        targets: str | list[str] = "vocals",
        evaluator: str = "museval",
    ) -> None:
        super().__init__(
            rate,
            context_frames,
            eval_workers,
            init_from,
            test_context_frames,
            test_only,
            stft=stft,
            channels=channels,
            targets=targets,
            evaluator=evaluator,
        )
        self.save_hyperparameters_with_net()
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
            self.front_end = MelFrontEnd(
                rate, mel_bins, self.stft_config.n_fft, self.stft_config.keep_dc
            )
        self.net = net
        self.pruning = pruning
        if pruning is not None:
            add_psp(net, include_transposed=pruning.include_transposed, gradient=pruning.gradient)
        if target not in VOCALS_PAIR:
            raise ValueError(f"target must be one of {VOCALS_PAIR}, got {target!r}")
        self.target_index = VOCALS_PAIR.index(target)
        self.multi_target = multi_target
        self.n_outputs = len(self.target_names) if multi_target else 1
        self._check_net_channels(net)
        if normalize_input:
            bins = self.bins
            self.register_buffer("input_mean", torch.zeros(bins))
            self.register_buffer("input_std", torch.ones(bins))
            self.output_gain = nn.Parameter(torch.ones(bins))
            self.output_bias = nn.Parameter(torch.zeros(bins))

    def _check_net_channels(self, net: nn.Module) -> None:
        """The network must take the data's channels and give one map per target and channel."""
        channels = net_channels(net)
        expected = (self.channels, self.n_outputs * self.channels)
        if channels is not None and channels != expected:
            what = f"{self.n_outputs} target(s) x {self.channels} channel(s)"
            raise ValueError(
                f"the network has in_channels={channels[0]}, out_channels={channels[1]}; "
                f"data.channels: {self.channels} with {what} needs in_channels={expected[0]}, "
                f"out_channels={expected[1]} (model.init_args.net.init_args)"
            )

    @property
    def output_targets(self) -> tuple[str, ...]:
        return self.target_names if self.multi_target else VOCALS_PAIR

    @property
    def mono_single(self) -> bool:
        """The thesis's layout: one target, one channel, spectrograms (B, F, T)."""
        return not self.multi_target and self.channels == 1

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.pruning is not None and not self.has_validation:
            raise ValueError("PSP (model.init_args.pruning) needs a validation split")
        if stage == "fit" and self.hparams.normalize_input:
            train = self.trainer.datamodule.splits["train"]
            mixtures = [
                torch.from_numpy(train.track(i).sum(axis=0)) for i in range(len(train.names))
            ]
            mean, std = input_statistics(mixtures, self.hparams.input_scale, self.spectrum)
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
        "embedding" (B, K, F, T). A (B, C, F, T) magnitude (stereo, or any multi-target model)
        is the network's input as it is: "main" is then (B, C, F, T), or (B, N, C, F, T) with
        ``multi_target``."""
        x = to_scale(self.analysis(magnitude), self.hparams.input_scale)
        if self.hparams.normalize_input:
            x = (x - self.input_mean[:, None]) / self.input_std[:, None]
        mono = x.dim() == 3  # the thesis's (B, F, T): one input channel
        out = (net or self.net)(x.unsqueeze(1) if mono else x)
        out = out if isinstance(out, dict) else {"main": out}
        if mono:
            out = {k: v if k == "embedding" else v.squeeze(1) for k, v in out.items()}
        if self.hparams.normalize_input:
            out["main"] = out["main"] * self.output_gain[:, None] + self.output_bias[:, None]
        if self.multi_target:
            out["main"] = out["main"].unflatten(-3, (self.n_outputs, -1))
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
        """The target's magnitude (B, F, T) from the mixture's; (B, N, C, F, T) from (B, C, F,
        T) with ``multi_target``."""
        mixture = mixture_magnitude.unsqueeze(-4) if self.multi_target else mixture_magnitude
        return self.magnitude_from_output(self(mixture_magnitude), mixture)

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

    def target_masks(self, targets: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """Wiener-like masks (alpha 2) of N targets (..., N, C, F, T) from their complex STFTs
        and the mixture's (..., C, F, T): the rest of the mixture (mixture - sum of the
        targets) is one more source where the target set does not cover the mixture; on the
        network's frequency scale (Mel with a Mel front end)."""
        magnitudes = targets.abs()
        if not self.covers_mixture:
            rest = (mixture - targets.sum(dim=-4)).abs().unsqueeze(-4)
            magnitudes = torch.cat([magnitudes, rest], dim=-4)
        magnitudes = self.analysis(magnitudes).movedim(-4, -3)  # sources on dim -3
        masks = wiener_like_mask(magnitudes, alpha=2.0).movedim(-3, -4)
        return masks.narrow(-4, 0, targets.shape[-4])  # the targets' masks, not the rest's

    @property
    def covers_mixture(self) -> bool:
        """Whether the data's targets add up to the mixture."""
        return self.target_names == VOCALS_PAIR or set(self.target_names) == set(SOURCES)

    def multi_objective_loss(
        self, output: torch.Tensor, mixture: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The objective's MSE for ``multi_target``, averaged over targets: raw output (B, N,
        C, F', T), complex mixture (B, C, F, T) and targets (B, N, C, F, T) STFTs."""
        scale = self.hparams.output_scale
        if self.hparams.objective == "mask":
            if self.hparams.mask == "tps":
                oracle = truncated_phase_sensitive_mask(targets, mixture.unsqueeze(-4))
            else:
                oracle = self.target_masks(targets, mixture)
            return F.mse_loss(self.mask_from_output(output), oracle)
        if self.hparams.objective == "spectrogram":
            return F.mse_loss(output, to_scale(targets.abs(), scale))
        estimate = self.magnitude_from_output(output, mixture.abs().unsqueeze(-4))
        return F.mse_loss(to_scale(estimate, scale), to_scale(targets.abs(), scale))

    def _mix(self, batch: dict) -> torch.Tensor:
        """The batch's mixture: (B, T) in the thesis's layout, else (B, C, T)."""
        return batch["mixture"][:, 0] if self.mono_single else batch["mixture"]

    def _target(self, batch: dict) -> torch.Tensor:
        """The single target of the batch, (B, T) in the thesis's layout, else (B, C, T):
        vocals, or accompaniment = everything but the vocals, whatever the target set."""
        target = self.vocals_pair(batch["mixture"], batch["targets"])[:, self.target_index]
        return target[:, 0] if self.mono_single else target

    def training_loss(self, batch: dict) -> torch.Tensor:
        if self.multi_target:
            mixture, targets = self.spectrum(batch["mixture"]), self.spectrum(batch["targets"])
            return self.multi_objective_loss(self(mixture.abs()), mixture, targets)
        mixture, target = self.spectrum(self._mix(batch)), self.spectrum(self._target(batch))
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

    @property
    def reports_val_sdr(self) -> bool:
        """``val/sdr`` is the first output target's: the vocals of the thesis's vocals models,
        every multi-target model's first target (none for the accompaniment models)."""
        return self.multi_target or self.target_index == 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._checked(self.training_loss(batch), "validation", batch_idx)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        if self.reports_val_sdr:
            # A second forward pass, on purpose: val/sdr separates the chunk as the test does
            # (centred STFT, blocks of the test context, iSTFT), which the loss's pass over
            # the chunk's own frames cannot give back; deriving it from that pass would
            # change every val/sdr (pinned in tests/results_fingerprints.json).
            if self.multi_target:
                estimate = torch.stack([self.separate(m)[0] for m in batch["mixture"]])
                reference = batch["targets"][:, 0]
            else:
                estimate = torch.stack([self.separate_vocals(m) for m in batch["mixture"]])
                reference = batch["targets"][:, self.target_names.index("vocals")]
            # channels and samples together, as museval scores a multichannel target
            reference, estimate = reference.flatten(-2), estimate.flatten(-2)
            snr = framewise_snr(reference, estimate)
            # As museval does for its frames: a chunk with a silent target has no SDR (NaN).
            silent = reference.abs().amax(dim=-1) == 0
            self._val_sdr.update(torch.where(silent, torch.nan, snr), batch.get("index"))

    def on_validation_epoch_start(self) -> None:
        # Not a child module (set through __dict__): the model's module tree, its state_dict
        # and what export traces stay the network's.
        self.__dict__["_val_sdr"] = ChunkMedian().to(self.device)

    def on_validation_epoch_end(self) -> None:
        """``val/sdr``: median over validation chunks, as museval's per-track median."""
        if not self.reports_val_sdr or self._val_sdr.update_count == 0:
            return
        median = self._val_sdr.compute()  # gathered from every rank: the same value on each
        if not median.isnan():
            # Equal on every rank already: "max" keeps it exact where a mean could round.
            self.log("val/sdr", median, prog_bar=True, sync_dist=True, reduce_fx="max")

    def _separate(self, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-track estimate: (raw output, mixture STFT, waveform). ``mixture`` (T,) gives the
        thesis's (F, frames), (F, frames), (T,); (C, T) gives (C, F, frames), (C, F, frames),
        (C, T), and (N, C, ...) outputs and waveforms with ``multi_target``."""
        if self.mono_single and mixture.dim() == 2:  # (1, T): the thesis's mono path
            output, spectrum, waveform = self._separate(mixture[0])
            return output[None], spectrum[None], waveform[None]
        spectrum = self.spectrum(mixture, center=True)
        output = in_blocks(self, spectrum.abs(), self.test_context, self.hparams.blocks_per_batch)
        magnitude = spectrum.abs().unsqueeze(-4) if self.multi_target else spectrum.abs()
        magnitude = self.magnitude_from_output(output, magnitude)
        phase = torch.exp(1j * spectrum.angle())
        phase = phase.unsqueeze(-4) if self.multi_target else phase
        waveform = self.waveform(magnitude * phase, length=mixture.shape[-1])
        return output, spectrum, waveform

    def _to_vocals(self, target: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        return target if self.target_index == 0 else mixture - target

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.multi_target:
            if "vocals" not in self.target_names:
                raise ValueError(f"this model estimates {list(self.target_names)}, not vocals")
            return self._separate(mixture)[2][self.target_names.index("vocals")]
        return self._to_vocals(self._separate(mixture)[2], mixture)

    def separate(self, mixture: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if self.multi_target:
            return self._separate(mixture)[2]
        return super().separate(mixture, targets)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Full-track separation, the objective on the whole track (the "Loss" column of
        Tables 4.1-4.3, averaged over tracks), then museval in the background."""
        self.check_test_batch(batch)
        mixture = batch["mixture"]
        output, spectrum, estimate = self._separate(mixture)
        if self.multi_target:
            references = self.spectrum(batch["targets"], center=True)
            loss = self.multi_objective_loss(output, spectrum, references)
            estimates = estimate
        else:
            one = {"mixture": mixture[None], "targets": batch["targets"][None]}
            reference = self._target(one)[0]
            if self.mono_single:  # the thesis's (F, frames) path
                output, spectrum = output[0], spectrum[0]
            loss = self.objective_loss(output, spectrum, self.spectrum(reference, center=True))
            vocals = self._to_vocals(estimate, mixture)
            estimates = torch.stack([vocals, mixture - vocals])
        self.log("test/loss", loss, batch_size=1, sync_dist=True)
        self.submit_for_evaluation(batch, estimates)

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
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"},
        }
