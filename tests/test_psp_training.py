"""PSP training (thesis 5.4.2): optimiser groups, the threshold schedule, checkpoints."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lightning_modules import SpectrogramSeparator
from lightning_modules.inference.stats import count_macs, count_parameters
from lightning_modules.nets import MMDenseNet
from lightning_modules.nets.pruning import (
    add_psp,
    get_threshold,
    psp_modules,
    remove_pruned_channels,
    set_threshold,
    sparsity,
    structure_parameters,
)
from lightning_modules.separators.checkpoint import load_separator
from lightning_modules.separators.psp import PSPConfig, ThresholdSchedule
from sweeps.plots import epoch_metrics, threshold_figure
from sweeps.render import efficiency_columns
from sweeps.runs import execute, resolve
from sweeps.specs import compose, deep_merge, load_profile, load_table


@pytest.fixture(autouse=True)
def _isolated(isolated_cache):
    pass


def test_config_ramp() -> None:
    config = PSPConfig(threshold=0.18, step=0.02)
    assert config.rises == 9 and config.ramp_epochs == 18
    assert [config.epsilon(n) for n in (0, 7, 9, 10)] == [0.0, 0.14, 0.18, 0.18]
    assert PSPConfig(threshold=0.05, step=0.02).rises == 3  # the last rise is clipped
    assert PSPConfig(threshold=0.05, step=0.02).epsilon(3) == 0.05
    with pytest.raises(ValueError, match="step > 0"):
        PSPConfig(step=0.0)
    with pytest.raises(ValueError, match="fine_tune_epochs"):
        PSPConfig(fine_tune_epochs=0)


def test_structure_parameters_have_their_own_decoupled_decay_group() -> None:
    model = SpectrogramSeparator(MMDenseNet(), pruning=PSPConfig())
    groups = model.parameter_groups()
    alphas = structure_parameters(model.net)
    assert [g["weight_decay"] for g in groups] == [1e-5, 0.0, 1e-2]
    assert {id(p) for p in groups[2]["params"]} == {id(a) for a in alphas}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    # the conv weights (parametrization "original") keep the thesis's 1e-5
    original = model.net.full_band.encoder[0].layers[0].conv.parametrizations.weight.original
    assert any(p is original for p in groups[0]["params"])
    optimizer = model.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)  # decoupled weight decay


def test_config_gradient_reaches_every_structure() -> None:
    """PSPConfig(gradient=...) picks the reading of eq. 5.5: "chain" (default) or "literal"."""
    assert PSPConfig().gradient == "chain"
    model = SpectrogramSeparator(MMDenseNet(), pruning=PSPConfig(gradient="literal"))
    assert {m.gradient for m in psp_modules(model.net)} == {"literal"}
    with pytest.raises(ValueError, match="gradient"):
        PSPConfig(gradient="sum")


class _FakeModule:
    def __init__(self) -> None:
        self.net = add_psp(MMDenseNet())
        self.logged: dict[str, list[float]] = {}

    def log(self, name: str, value: float) -> None:
        self.logged.setdefault(name, []).append(float(value))


def test_schedule_waits_for_a_plateau_then_ramps_to_an_exact_final_threshold() -> None:
    """epsilon = 0.22 is 0.2199... in the float32 buffer: the final epochs must still count."""
    config = PSPConfig(threshold=0.22, step=0.02, fine_tune_epochs=2, patience=2)
    schedule, module = ThresholdSchedule(config), _FakeModule()
    trainer = SimpleNamespace(
        sanity_checking=False, callback_metrics={}, current_epoch=0, should_stop=False
    )
    schedule.train_epochs = 100
    losses = [1.0, 0.8, 0.7, 0.7, 0.71] + [0.6] * 40  # plateau: 2 epochs without a new best
    epoch = 0
    while not trainer.should_stop:
        trainer.current_epoch = epoch
        schedule.on_train_epoch_start(trainer, module)
        trainer.callback_metrics = {"val/loss": torch.tensor(losses[epoch])}
        schedule.on_validation_epoch_end(trainer, module)
        epoch += 1
    thresholds = module.logged["psp/threshold"]
    # saturated after epoch 4 (epochs 3 and 4 bring no new best), then 0.02 per 2 epochs
    assert thresholds[:5] == [0.0] * 5
    assert thresholds[5:8] == pytest.approx([0.02, 0.02, 0.04])
    assert len(thresholds) == 5 + 11 * 2 and thresholds[-2:] == pytest.approx([0.22, 0.22])
    pruned = module.logged["val/pruned_loss"]
    assert all(math.isinf(v) for v in pruned[:-2]) and pruned[-2:] == pytest.approx([0.6, 0.6])
    state = schedule.state_dict()
    assert state["phase"] == "done" and state["rises"] == 11
    module.net.eval()
    schedule.on_test_start(trainer, module)  # at the configured threshold: fine
    set_threshold(module.net, 0.2)
    with pytest.raises(RuntimeError, match="before the ramp reached it"):
        schedule.on_test_start(trainer, module)


SHORT = {
    "trainer.max_epochs": 2,
    "data.context_frames": 8,
    "data.max_test_tracks": 1,
    "data.test_max_seconds": 2.0,
    # patience 5 > 2 epochs: the ramp starts because max_epochs are over
    "model.init_args.pruning": {
        "threshold": 0.05,
        "step": 0.02,
        "fine_tune_epochs": 1,
        "patience": 5,
    },
}


@pytest.mark.slow
def test_threshold_rises_after_training_and_the_best_checkpoint_is_fully_pruned(tmp_path):
    spec = load_table("4.3")
    config = deep_merge(compose(spec, spec.rows[0], load_profile("ci")), SHORT)
    result = execute(resolve(config), tmp_path / "run", profile="ci")

    metrics = epoch_metrics(tmp_path / "run")
    thresholds = [metrics["psp/threshold"][e] for e in sorted(metrics["psp/threshold"])]
    # 2 training epochs at 0, then 0.02, 0.04 and 0.05 (clipped) with 1 fine-tuning epoch each
    assert thresholds == pytest.approx([0.0, 0.0, 0.02, 0.04, 0.05])
    assert result["epochs"] == 5
    pruned_loss = metrics["val/pruned_loss"]
    assert all(math.isinf(pruned_loss[e]) for e in range(4)) and math.isfinite(pruned_loss[4])
    sparsities = [metrics["psp/sparsity"][e] for e in sorted(metrics["psp/sparsity"])]
    assert sparsities[0] == 0.0 and sparsities[-1] > 0.0

    # The tested checkpoint is at the final threshold and reloads through load_separator.
    assert result["checkpoint"].endswith("best.ckpt")
    checkpoint = tmp_path / "run" / result["checkpoint"]  # result.json may store it relative
    model = load_separator(checkpoint)
    assert get_threshold(model.net) == pytest.approx(0.05)
    assert sparsity(model.net) == pytest.approx(sparsities[-1])
    plain = remove_pruned_channels(model.net)
    magnitude = torch.rand(2, 1024, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            model.heads(magnitude, plain)["main"], model(magnitude), atol=1e-5, rtol=1e-5
        )

    # The tables count the pruned row on its removed network.
    columns = efficiency_columns(resolve(config), 8, str(checkpoint))
    assert columns["Parameters"] == count_parameters(plain) < count_parameters(MMDenseNet())
    assert columns["MACs"] == count_macs(plain, 8) < count_macs(MMDenseNet(), 8)
    assert columns["Sparsity"] == pytest.approx(100 * sparsities[-1])


def test_threshold_figure_is_drawn_from_rows_and_ramps(tmp_path) -> None:
    rows = [
        {"epsilon": 0.0, "sdr": 4.9, "sparsity": 0.0, "sdr_thesis": 4.91},
        {
            "epsilon": 0.18,
            "sdr": 4.8,
            "sparsity": 11.0,
            "sdr_thesis": 4.86,
            "sparsity_thesis": 11.53,
        },
    ]
    ramp = {
        "psp/threshold": {0: 0.0, 1: 0.02, 2: 0.02, 3: 0.04},
        "psp/sparsity": {0: 0.0, 1: 0.01, 2: 0.02, 3: 0.05},
        "val/sdr": {0: 3.0, 1: 3.1, 2: 3.2, 3: 3.0},
    }
    path = threshold_figure(rows, [ramp], tmp_path / "fig.png")
    assert path.exists() and path.stat().st_size > 10_000
    assert threshold_figure([], [], tmp_path / "none.png") is None


def test_table_5_10_published_deltas_are_the_thesis_printed_ones() -> None:
    """Table 5.10 prints -6.52 % MACs, -5.24 % parameters and -1.02 % SDR."""
    from sweeps.render import relative_change

    spec = load_table("5.10")
    reference = next(r for r in spec.rows if r.label == spec.relative_to).published
    pruned = next(r for r in spec.rows if r.label != spec.relative_to).published
    printed = {"MACs": -6.52, "Parameters": -5.24, "SDR": -1.02}
    for column, delta in printed.items():
        assert relative_change(pruned[column], reference[column]) == pytest.approx(delta, abs=0.01)
