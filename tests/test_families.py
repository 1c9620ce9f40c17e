"""Every training objective of thesis chapter 4 learns: a short training lowers its
validation loss. Short runs at 8 frames of context on the `ci` synthetic data."""

from __future__ import annotations

import pytest

from sweeps.plan import plan_table
from sweeps.plots import epoch_metrics
from sweeps.runs import execute, resolve
from sweeps.specs import deep_merge, load_table

SHORT_TRAINING = {
    "trainer.max_epochs": 4,
    "trainer.limit_train_batches": 4,
    "trainer.limit_val_batches": 2,
    "data.context_frames": 8,
    "data.batch_size": 4,
    "data.valid_chunks_per_track": 4,
    "data.max_test_tracks": 1,
    "data.test_max_seconds": 2.0,
}

FAMILIES = [
    ("4.4", "log/log, 600 epochs, shift 0"),
    ("4.5", "Mean-var. norm.: yes"),
    ("4.6", "Baseline, vocals"),
    ("4.6", "WF-mask"),
    ("4.6", "TPS-mask"),
    ("4.6", "learned mask"),
    ("4.7", "Out-Block, SA, ReLU"),
    ("4.7", "Decoder, SA, ReLU + joint mask comp."),
    ("4.13", "SA, alpha 0.2"),
    ("4.13", "SA, attractor loss, alpha 0.2"),
    ("4.13", "WF-MA, alpha 0.5"),
]


@pytest.fixture(autouse=True)
def _isolated(isolated_cache):
    pass


@pytest.mark.slow
@pytest.mark.parametrize(("table", "label"), FAMILIES)
def test_short_training_lowers_the_validation_loss(table, label, tmp_path) -> None:
    plan = next(p for p in plan_table(load_table(table), "ci", tmp_path) if p.row.label == label)
    (stage,) = plan.stages
    resolved = resolve(deep_merge(stage.resolved, SHORT_TRAINING))
    execute(resolved, tmp_path / "run", profile="ci")
    losses = epoch_metrics(tmp_path / "run")["val/loss"]
    assert len(losses) == 4
    assert losses[3] < losses[0], losses
