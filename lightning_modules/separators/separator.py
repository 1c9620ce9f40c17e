"""The shared base of every separation model: full-track test with museval, and the thesis's
optimiser. Subclasses say how the estimates are made from a mixture.

Test protocol (thesis 3.3.3, issue #2): full tracks; BSS Eval v4 on every target the model
estimates, all together, with 1 s windows, evaluated in parallel processes while the next track
is separated; one museval JSON per track (every target in it) in ``<run folder>/museval``.
Tables are rendered from those files, never from logged metrics. The thesis's models estimate
the vocals only; for them the set is (vocals, accompaniment = mixture - vocals estimate).

Shapes (issue #11), mono included (C = 1): a full track's ``mixture`` is (C, T) and its
``targets`` (N, C, T) in the data's target set (``targets``, linked from ``data.targets``);
``separate`` returns (N', C, T) in the order of ``output_targets``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from torch import nn

from datamodules.conventions import (
    SOURCES,
    TARGET_SETS,
    STFTConfig,
    check_channels,
    stft_config,
    target_names,
    targets_from_sources,
)
from lightning_modules.dsp.spectral import istft, stft, stft_kwargs
from lightning_modules.evaluation.bss import EVALUATORS, ParallelEvaluator, aggregate

#: The pair the thesis's single-target models are evaluated on.
VOCALS_PAIR: tuple[str, ...] = TARGET_SETS["vocals"]
#: What the model monitors instead of ``val/loss`` when the data has no validation split.
TRAIN_LOSS = "train/loss_epoch"


class Separator(L.LightningModule):
    """Base LightningModule: subclasses implement ``separate_vocals`` (one estimate: the
    vocals; the base completes the pair with accompaniment = mixture - vocals) or ``separate``
    (every target of ``output_targets``).

    Args:
        rate: sample rate of the audio the model sees (linked from the DataModule).
        context_frames: STFT frames per forward pass (linked from the DataModule).
        eval_workers: processes running museval during test (0: inline).
        init_from: a checkpoint whose weights training starts from (the previous stage of a
            multi-stage row; the table runner fills it in).
        test_context_frames: STFT frames per forward pass in the full-track test (default:
            ``context_frames``); thesis Table 5.1 tests a model at another context than it was
            trained with.
        test_only: only test the weights of ``init_from``, without training (a re-test stage,
            e.g. at another ``test_context_frames``); the table runner then skips ``fit``.
        stft: the STFT (``STFTConfig``; None: the thesis's), linked from ``data.stft``.
        channels: audio channels, 1 or 2, linked from ``data.channels``.
        targets: the data's target set ("vocals", "all" or a list of sources), linked from
            ``data.targets``: what a batch's ``targets`` hold, in that order.
        evaluator: the test's BSS Eval v4: "museval" (the reference, in ``eval_workers``
            processes) or "fast" (``evaluation.fast_bss``, inline on the model's device);
            ``test_scores["evaluator"]`` (a run's result.json) says which.
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    #: False for models that are only evaluated (oracles, combinations of trained models).
    trainable: bool = True

    def __init__(
        self,
        rate: int = 32000,
        context_frames: int = 64,
        eval_workers: int = 2,
        init_from: str | None = None,
        test_context_frames: int | None = None,
        test_only: bool = False,
        stft: STFTConfig | None = None,
        channels: int = 1,
        targets: str | list[str] = "vocals",
        evaluator: str = "museval",
    ) -> None:
        super().__init__()
        if evaluator not in EVALUATORS:
            raise ValueError(f"model.evaluator must be one of {EVALUATORS}, got {evaluator!r}")
        if test_context_frames is not None and test_context_frames < 1:
            raise ValueError(f"test_context_frames must be >= 1, got {test_context_frames}")
        if test_only and not init_from:
            raise ValueError("test_only needs init_from: the checkpoint whose weights are tested")
        self.rate = rate
        self.context_frames = context_frames
        self.test_context_frames = test_context_frames
        self.eval_workers = eval_workers
        self.evaluator = evaluator
        self.init_from = init_from
        try:
            self.stft_config = stft_config(stft)
            self.channels = check_channels(channels)
            self.target_names = target_names(targets)
        except ValueError as error:
            raise ValueError(f"model: {error}") from None
        if test_only:
            self.trainable = False  # the instance attribute shadows the class's
        self._evaluator: ParallelEvaluator | None = None
        self.test_scores: dict = {}
        self.target_scores: dict[str, dict] = {}

    def save_hyperparameters_with_net(self) -> None:
        """``save_hyperparameters()`` of the calling ``__init__``, the injected ``net`` included:
        LightningCLI stores the network's config in the checkpoint (that is how checkpoints are
        reloaded), so Lightning's advice to ignore an nn.Module argument does not apply."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of")
            self.save_hyperparameters(frame=inspect.currentframe().f_back)

    @property
    def test_context(self) -> int:
        """Frames per forward pass of the full-track test."""
        return self.test_context_frames or self.context_frames

    @property
    def output_targets(self) -> tuple[str, ...]:
        """The targets ``separate`` returns and the test evaluates, in order: the data's target
        set, or (vocals, accompaniment) for models that estimate the vocals only."""
        return VOCALS_PAIR

    # -- the row's STFT ----------------------------------------------------------------------

    def spectrum(self, x: torch.Tensor, center: bool = False) -> torch.Tensor:
        """Complex STFT of ``x`` (..., T) with the row's STFT (``dsp.spectral.stft``)."""
        return stft(x, center=center, **stft_kwargs(self.stft_config))

    def waveform(self, spectrum: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of ``spectrum(x, center=True)`` (``dsp.spectral.istft``)."""
        return istft(spectrum, length, **stft_kwargs(self.stft_config))

    @property
    def bins(self) -> int:
        """Frequency bins of the row's spectrograms."""
        return self.stft_config.bins

    # -- validation split ------------------------------------------------------------------

    @property
    def has_validation(self) -> bool:
        """Whether the data has a validation split (``data.valid_fraction: 0`` has none)."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        return bool(getattr(datamodule, "has_validation", True))

    @property
    def monitor(self) -> str:
        """The loss that selects the best checkpoint and drives the learning-rate schedule."""
        return "val/loss" if self.has_validation else TRAIN_LOSS

    def setup(self, stage: str) -> None:
        if stage == "fit" and not self.has_validation:
            # No validation loop: the best checkpoint is the one with the lowest training loss
            # of an epoch (the monitor callbacks of the experiments name val/loss).
            for callback in self.trainer.checkpoint_callbacks:
                if getattr(callback, "monitor", None) == "val/loss":
                    callback.monitor = TRAIN_LOSS
        # Before Lightning restores a resumed run's own checkpoint, which then takes precedence.
        # A test-only model is tested without a checkpoint of its own: its weights are these.
        if self.init_from and (stage == "fit" or (stage == "test" and not self.trainable)):
            state = torch.load(self.init_from, map_location="cpu", weights_only=False)
            self.load_state_dict(state["state_dict"])

    # -- separation -------------------------------------------------------------------------

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vocals waveform estimated from a full-track ``mixture``, (T,) or (C, T), in the same
        shape. ``targets`` ((N, [C,] T), the data's target set) are only given to oracles."""
        raise NotImplementedError

    def separate(self, mixture: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """(N', C, T) estimates of ``output_targets`` from a (C, T) ``mixture``. The base
        completes a vocals estimate with accompaniment = mixture - vocals (the thesis)."""
        vocals = self.separate_vocals(mixture, targets)
        return torch.stack([vocals, mixture - vocals])

    def vocals_pair(self, mixture: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(vocals, accompaniment) along dim -3 from the data's targets (..., N, C, T) and the
        mixture (..., C, T): any target set that holds the vocals."""
        names = self.target_names
        if names == VOCALS_PAIR:
            return targets
        if names == SOURCES:
            return targets_from_sources(targets, "vocals", dim=-3)
        if "vocals" not in names:
            raise ValueError(
                f"data.targets {list(names)} has no vocals: this model estimates the vocals or "
                "their accompaniment"
            )
        vocals = targets.narrow(-3, names.index("vocals"), 1)
        return torch.cat([vocals, mixture.unsqueeze(-3) - vocals], dim=-3)

    def references(self, mixture: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The true signals of ``output_targets`` (..., N', C, T) from a batch or track."""
        if self.output_targets == self.target_names:
            return targets
        if self.output_targets == VOCALS_PAIR:
            return self.vocals_pair(mixture, targets)
        raise ValueError(
            f"{type(self).__name__} estimates {list(self.output_targets)}, which data.targets "
            f"{list(self.target_names)} does not hold"
        )

    # -- test ----------------------------------------------------------------------------

    @property
    def museval_dir(self) -> Path:
        return Path(self.trainer.default_root_dir) / "museval"

    def on_test_epoch_start(self) -> None:
        fast = self.evaluator == "fast"
        self._evaluator = ParallelEvaluator(
            n_workers=0 if fast else self.eval_workers,
            target_names=self.output_targets,
            evaluator=self.evaluator,
            device=str(self.device) if fast and self.device.type == "cuda" else None,
        )
        self._evaluator.__enter__()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.check_test_batch(batch)
        self.submit_for_evaluation(batch, self.separate(batch["mixture"], batch["targets"]))

    @staticmethod
    def check_test_batch(batch: dict) -> None:
        for label in ("mixture", "targets"):
            if not torch.isfinite(batch[label]).all():
                raise ValueError(
                    f"test track '{batch['name']}': the {label} has NaN or inf samples"
                )

    def submit_for_evaluation(self, batch: dict, estimates: torch.Tensor) -> None:
        """Queue museval on the (N', C, T) estimates of ``output_targets`` of one full track
        against their references."""
        name, mixture, targets = batch["name"], batch["mixture"], batch["targets"]
        for target, estimate in zip(self.output_targets, estimates, strict=True):
            if not torch.isfinite(estimate).all():
                raise FloatingPointError(
                    f"test track '{name}': the {target} estimate has NaN or inf"
                )
        references = self.references(mixture, targets)
        assert self._evaluator is not None
        self._evaluator.submit(
            name,
            references.float().cpu().numpy(),
            estimates.float().cpu().numpy(),
            self.rate,
            self.museval_dir,
        )

    def teardown(self, stage: str) -> None:
        if self._evaluator is not None:  # a test step failed: stop the museval workers
            self._evaluator.close(cancel=True)
            self._evaluator = None

    def on_test_epoch_end(self) -> None:
        """``target_scores``: ``aggregate`` per target; ``test_scores``: the first target's
        (the vocals in every thesis row), what the table runner and the sweeps read."""
        assert self._evaluator is not None
        try:
            results = self._evaluator.results()
        finally:
            self._evaluator.__exit__(None, None, None)
            self._evaluator = None
        self.target_scores = {name: aggregate(results, target=name) for name in self.output_targets}
        self.test_scores = {
            **self.target_scores[self.output_targets[0]],
            "evaluator": self.evaluator,
        }
        for metric in ("SDR", "SIR", "SAR"):
            value = self.test_scores.get(metric, {}).get("median", math.nan)
            self.log(f"test/{metric}", float(value), sync_dist=True)
            for name, scores in self.target_scores.items():
                value = scores.get(metric, {}).get("median", math.nan)
                self.log(f"test/{name}/{metric}", float(value), sync_dist=True)


def split_decay_groups(
    module: nn.Module, weight_decay: float, exclude: Iterable[nn.Parameter] = ()
) -> list[dict]:
    """AdamW groups of thesis 3.3.4: weight decay on weights, not on biases nor BatchNorm.
    Parameters in ``exclude`` are left out: they get a group of their own (PSP's structure
    parameters, thesis 5.4.2)."""
    excluded = {id(p) for p in exclude}
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad or id(parameter) in excluded:
            continue
        is_norm_or_bias = parameter.ndim <= 1 or name.endswith(".bias")
        (no_decay if is_norm_or_bias else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
