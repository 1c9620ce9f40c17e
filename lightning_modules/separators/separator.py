"""The shared base of every separation model: full-track test with museval, and the thesis's
optimiser. Subclasses only say how the vocals estimate is made from a mixture.

Test protocol (thesis 3.3.3, issue #2): full tracks; the accompaniment estimate is the mixture
minus the vocals estimate; BSS Eval v4 on [vocals, accompaniment] with 1 s windows, evaluated
in parallel processes while the next track is separated; one museval JSON per track in
``<run folder>/museval``. Tables are rendered from those files, never from logged metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from torch import nn

from datamodules.conventions import targets_from_sources
from lightning_modules.evaluation.bss import ParallelEvaluator, aggregate


class Separator(L.LightningModule):
    """Base LightningModule: subclasses implement ``separate_vocals``.

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
    ) -> None:
        super().__init__()
        if test_context_frames is not None and test_context_frames < 1:
            raise ValueError(f"test_context_frames must be >= 1, got {test_context_frames}")
        if test_only and not init_from:
            raise ValueError("test_only needs init_from: the checkpoint whose weights are tested")
        self.rate = rate
        self.context_frames = context_frames
        self.test_context_frames = test_context_frames
        self.eval_workers = eval_workers
        self.init_from = init_from
        if test_only:
            self.trainable = False  # the instance attribute shadows the class's
        self._evaluator: ParallelEvaluator | None = None
        self.test_scores: dict = {}

    @property
    def test_context(self) -> int:
        """Frames per forward pass of the full-track test."""
        return self.test_context_frames or self.context_frames

    def setup(self, stage: str) -> None:
        # Before Lightning restores a resumed run's own checkpoint, which then takes precedence.
        # A test-only model is tested without a checkpoint of its own: its weights are these.
        if self.init_from and (stage == "fit" or (stage == "test" and not self.trainable)):
            state = torch.load(self.init_from, map_location="cpu", weights_only=False)
            self.load_state_dict(state["state_dict"])

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vocals waveform (T,) estimated from a full-track ``mixture`` (T,). ``targets`` are
        only given to oracle models."""
        raise NotImplementedError

    @property
    def museval_dir(self) -> Path:
        return Path(self.trainer.default_root_dir) / "museval"

    def on_test_epoch_start(self) -> None:
        self._evaluator = ParallelEvaluator(n_workers=self.eval_workers)
        self._evaluator.__enter__()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.check_test_batch(batch)
        vocals = self.separate_vocals(batch["mixture"], batch["targets"])
        self.submit_for_evaluation(batch, vocals)

    @staticmethod
    def check_test_batch(batch: dict) -> None:
        for label in ("mixture", "targets"):
            if not torch.isfinite(batch[label]).all():
                raise ValueError(
                    f"test track '{batch['name']}': the {label} has NaN or inf samples"
                )

    def submit_for_evaluation(self, batch: dict, vocals: torch.Tensor) -> None:
        """Queue museval on [vocals, accompaniment = mixture - vocals] of one full track."""
        name, mixture, targets = batch["name"], batch["mixture"], batch["targets"]
        if not torch.isfinite(vocals).all():
            raise FloatingPointError(f"test track '{name}': the vocals estimate has NaN or inf")
        references = targets_from_sources(targets, "vocals")  # (vocals, accompaniment)
        estimates = torch.stack([vocals, mixture - vocals])
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
        assert self._evaluator is not None
        try:
            results = self._evaluator.results()
        finally:
            self._evaluator.__exit__(None, None, None)
            self._evaluator = None
        self.test_scores = aggregate(results, target="vocals")
        for metric in ("SDR", "SIR", "SAR"):
            value = self.test_scores.get(metric, {}).get("median", math.nan)
            self.log(f"test/{metric}", float(value), sync_dist=True)


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
