"""Training with Parameterized Structured Pruning (thesis 5.4.2): the threshold schedule.

The network carries PSP structure parameters (``nets.pruning``); ``SpectrogramSeparator``
attaches them when given a ``PSPConfig`` and trains them in their own AdamW group. The thesis:
"The sparsity threshold epsilon is set to zero initially and is gradually increased when
training has saturated. After each threshold increase, the network is fine-tuned for a short
training round of 2 epochs." ``ThresholdSchedule`` does exactly that:

* saturated = the validation loss has not improved for ``patience`` epochs (a plateau; the
  thesis gives no number), or ``trainer.max_epochs`` are over, whichever comes first;
* then epsilon rises by ``step`` (the last rise is clipped to ``threshold``), and
  ``fine_tune_epochs`` epochs follow each rise; the run ends after the fine-tuning at
  ``threshold``. These ramp epochs come on top of ``trainer.max_epochs``, so a profile that
  scales the epochs never cuts the ramp short;
* the best checkpoint is chosen among the epochs trained at the final threshold:
  ``val/pruned_loss`` is the validation loss there and +inf before, and the run's
  ``val/loss`` checkpoint callbacks monitor it instead (otherwise "best" would be an
  unpruned epoch).

Logged per epoch: ``psp/threshold``, ``psp/sparsity`` (pruned / all structures) and
``val/pruned_loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_modules.nets.pruning import (
    GRADIENTS,
    get_threshold,
    set_threshold,
    sparsity,
)

PRUNED_LOSS = "val/pruned_loss"


@dataclass(frozen=True)
class PSPConfig:
    """PSP options of ``SpectrogramSeparator(pruning=...)``.

    Args:
        threshold: the final pruning threshold epsilon (Table 5.10: 0.18).
        step: epsilon's increase per rise (0.02 reaches the thesis's 0.14, 0.18 and 0.22).
        fine_tune_epochs: epochs after each rise (thesis: 2).
        patience: epochs without a lower validation loss that count as saturated.
        weight_decay: decoupled AdamW decay of the structure parameters (thesis: 1e-2; the
            weights keep the model's ``weight_decay``, 1e-5).
        include_transposed: also prune the up-sampling path's transposed convs (the thesis
            names only point-wise and 3x3 convs).
        gradient: the structure gradient, ``"chain"`` (default: the chain rule through
            ``q = w * nu``, ``sum dE/dq * w`` over the channel's weights) or ``"literal"``
            (eq. 5.5 as printed, ``sum dE/dq``), so that the two can be compared
            (``nets.pruning``'s docstring says why chain is the default).
    """

    threshold: float = 0.18
    step: float = 0.02
    fine_tune_epochs: int = 2
    patience: int = 10
    weight_decay: float = 1e-2
    include_transposed: bool = False
    gradient: str = "chain"

    def __post_init__(self) -> None:
        if self.gradient not in GRADIENTS:
            raise ValueError(f"PSP gradient must be one of {GRADIENTS}, got {self.gradient!r}")
        if self.threshold < 0 or self.step <= 0:
            raise ValueError(
                f"PSP needs threshold >= 0 and step > 0, got {self.threshold}, {self.step}"
            )
        if self.fine_tune_epochs < 1 or self.patience < 1:
            raise ValueError("PSP fine_tune_epochs and patience must be >= 1")

    @property
    def rises(self) -> int:
        """Threshold rises from 0 to ``threshold``."""
        return math.ceil(self.threshold / self.step - 1e-9)

    @property
    def ramp_epochs(self) -> int:
        return self.rises * self.fine_tune_epochs

    def epsilon(self, rises: int) -> float:
        """The threshold after ``rises`` rises; rounded, so 7 x 0.02 gives 0.14 exactly."""
        return round(min(self.threshold, rises * self.step), 10)


class ThresholdSchedule(Callback):
    """Raises the PSP threshold of ``pl_module.net`` once training saturates (module doc)."""

    def __init__(self, config: PSPConfig) -> None:
        self.config = config
        self.best = math.inf
        self.wait = 0
        self.rises = 0
        self.since_rise = 0
        self.phase = "train"  # "train" -> "ramp" -> "done"
        self.pending = False  # a rise decided at the end of an epoch, applied at the next start
        self.train_epochs: int | None = None

    @property
    def state_key(self) -> str:
        return "ThresholdSchedule"

    def state_dict(self) -> dict[str, Any]:
        keys = ("best", "wait", "rises", "since_rise", "phase", "pending")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, value in state_dict.items():
            setattr(self, key, value)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor == "val/loss":
                callback.monitor = PRUNED_LOSS  # best among the epochs at the final threshold

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_epochs = trainer.max_epochs
        if self.train_epochs is not None and self.train_epochs >= 0:
            trainer.fit_loop.max_epochs = self.train_epochs + self.config.ramp_epochs

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epsilon = get_threshold(pl_module.net)
        if not math.isclose(epsilon, self.config.threshold, abs_tol=1e-6):
            raise RuntimeError(
                f"the tested PSP model has threshold {epsilon:.4f}, not the configured "
                f"{self.config.threshold}: its training stopped before the ramp reached it "
                "(a checkpoint from before the final threshold)"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pending:
            set_threshold(pl_module.net, self.config.epsilon(self.rises))
            self.pending = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        net = pl_module.net
        epsilon = get_threshold(net)
        pl_module.log("psp/threshold", epsilon)
        pl_module.log("psp/sparsity", sparsity(net))
        loss = float(trainer.callback_metrics["val/loss"])
        # Counted in rises, not by comparing epsilon: the float32 buffer holds 0.22 as 0.2199...
        at_target = self.rises >= self.config.rises and not self.pending
        pl_module.log(PRUNED_LOSS, loss if at_target else math.inf)
        # Decided here, before the checkpoint callbacks save this epoch (on_validation_end),
        # so a resumed run continues with the same decision.
        if self.phase == "train":
            if loss < self.best:
                self.best, self.wait = loss, 0
            else:
                self.wait += 1
            limit = self.train_epochs
            out_of_epochs = limit is not None and 0 < limit <= trainer.current_epoch + 1
            if self.wait >= self.config.patience or out_of_epochs:
                self.phase = "ramp"
                self._rise(trainer)
        elif self.phase == "ramp":
            self.since_rise += 1
            if self.since_rise >= self.config.fine_tune_epochs:
                self._rise(trainer)

    def _rise(self, trainer: L.Trainer) -> None:
        if self.rises >= self.config.rises:  # fine-tuned at the final threshold: finished
            self.phase = "done"
            trainer.should_stop = True
            return
        self.rises += 1
        self.since_rise = 0
        self.pending = True
