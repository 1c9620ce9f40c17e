"""Multi-band dense blocks (MBDB-1..7) and multi-band channels (MBC), thesis 4.4 / Table 4.10:
band geometry and cross-fades, band locality, the experiments against the Table 4.8/4.9
transcription, pinned parameter and MAC counts, MBC stacking, Fig. 4.8, ONNX export, and the
table (plan; end to end at the ci profile)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from lightning_modules.evaluation.kernel_pca import kernel_norm_pca
from lightning_modules.inference.stats import count_parameters, network_stats
from lightning_modules.nets.multiband import (
    Band,
    BandChainBlock,
    BandChannelDenseNet,
    MultiBandBlockConfig,
    MultiBandDenseLayer,
    MultiBandInput,
    band_slices,
    join_bands,
    stack_bands,
    unstack_bands,
)
from sweeps.render import RESULT_FIGURES
from sweeps.specs import REPO

EXPERIMENTS = REPO / "experiments" / "mmdensenet"
MODELS = ("mbdb_1", "mbdb_2", "mbdb_3", "mbdb_4", "mbdb_5", "mbdb_6", "mbdb_7", "mbc")

# Parameters and MACs (batch 1, 64 frames, 1024 bins) as `make stats` counts them. The
# baseline (268,929 / 3.838 G) is pinned in tests/test_counting.py.
COUNTS = {
    "mbdb_1": (275_667, 5_399_808_256),
    "mbdb_2": (244_131, 4_021_225_536),
    "mbdb_3": (277_793, 5_599_541_248),
    "mbdb_4": (348_222, 3_450_851_328),
    "mbdb_5": (289_941, 4_829_403_136),
    "mbdb_6": (216_634, 2_320_024_088),
    "mbdb_7": (349_818, 3_266_883_072),
    "mbc": (243_825, 4_734_582_784),
}

# Thesis Table 4.8, transcribed from ../shared/specs/thesis-multiband-phase.md section 1 (garbled
# cells read as the spec's A8 proposes). Per scale 1, 1/2, 1/4, 1/8: band limits in kHz, k per band
# (full band last), input kernels (scale 1, full last), L (one value, or per band with the full
# band last), overlap, BC in / internal / out, forced full-band output; then the output block.
_8K = ((0, 8), (8, 16))
_4B = ((0, 1), (1, 4), (4, 16))
_5B = ((0, 0.25), (0.25, 1), (1, 4), (4, 16))
TABLE_4_8 = {
    "mbdb_1": (
        [(_8K, (10, 4, 6), (32, 32, 32), 3, 0.1, None, 4, 8, 10)]
        + [(_8K, (10, 4, 6), None, 4, 0.1, None, 4, 8, 10)] * 3,
        (6, 2),
    ),
    "mbdb_2": (
        [
            (_5B, (5, 9, 9, 5, 6), (14, 18, 18, 12, 20), 3, 0.1, None, 4, 8, 10),
            (_4B, (7, 7, 4, 6), None, 4, 0.1, None, 4, 8, 10),
            (_8K, (7, 4, 6), None, 4, 0.1, None, 4, 8, 10),
            ((), (6,), None, 4, None, None, None, None, None),
        ],
        (6, 2),
    ),
    "mbdb_3": (
        [(_8K, (10, 4, 6), (32, 32, 32), 4, None, None, 2, None, None)]
        + [(_8K, (10, 4, 6), None, 4, None, None, 2, None, None)] * 2
        + [(_8K, (10, 4, 6), None, 3, None, None, 2, None, None)],
        (4, 2),
    ),
    "mbdb_4": (
        [
            (_4B, (10, 10, 5, 6), (20, 20, 18, 20), 3, None, None, 4, None, None),
            (_4B, (9, 10, 5, 6), None, 4, None, None, 4, None, None),
            (_4B, (9, 9, 5, 6), None, 4, None, None, 4, None, None),
            (_4B, (9, 9, 5, 6), None, 4, None, None, 4, None, None),
        ],
        (6, 2),
    ),
    "mbdb_5": (
        [
            (_8K, (14, 13, 8), (16, 16, 16), (4, 3, 3), None, 3, None, 5, None),
            (_8K, (14, 13, 8), None, (4, 3, 3), None, 3, None, 5, None),  # garbled BC in/out
            (_8K, (14, 12, 8), None, (4, 3, 3), None, 3, None, 5, None),
            (_8K, (14, 12, 8), None, (4, 3, 3), None, 3, None, 5, None),  # garbled BC out
        ],
        (4, 2),
    ),
    "mbdb_6": (
        [
            (_4B, (14, 14, 8, 6), (16, 16, 12, 16), (4, 3, 2, 3), 0.1, 3, None, 5, None),
            (_4B, (9, 10, 5, 6), None, (4, 3, 2, 3), 0.1, 3, None, 5, None),
            (_4B, (9, 9, 5, 6), None, (4, 3, 2, 3), 0.1, 3, None, 5, None),
            (_4B, (9, 9, 5, 6), None, (4, 3, 2, 3), 0.1, 3, None, 5, None),
        ],
        (4, 2),
    ),
    "mbdb_7": (
        [(_4B, (10, 12, 6, 7), (16, 16, 12, 16), (4, 4, 2, 3), 0.1, 5, None, None, None)]
        + [(_4B, (10, 12, 6, 7), None, (4, 4, 2, 3), 0.1, 5, None, None, None)] * 3,
        (4, 2),
    ),
}


def _net_config(name: str) -> dict:
    return yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["model"]["init_args"]["net"]


def _build(name: str) -> torch.nn.Module:
    from lightning_modules.inference.stats import net_from_config

    torch.manual_seed(0)
    return net_from_config(_net_config(name))


def _constant_join(slices, n_bins: int) -> torch.Tensor:
    maps = [torch.full((1, 2, s.stop - s.start, 3), 7.0) for s in slices]
    return join_bands(maps, slices, n_bins)


# --- band geometry -----------------------------------------------------------------------------


def test_band_slices_of_the_spec() -> None:
    """Hand-computed: 8 kHz at 1024 bins, overlap 0.1 -> edge 512, 51 bins each side; MBDB-2's
    four bands at scale 1 -> edges 16, 64, 256 with 2, 6 and 26 overlapping bins."""
    low, high = band_slices([(0, 8000), (8000, 16000)], 1024, 0.1)
    assert (low.start, low.stop, high.start, high.stop) == (0, 563, 461, 1024)
    assert (low.fade_in, low.fade_out, high.fade_in, high.fade_out) == (0, 102, 102, 0)
    four = band_slices([(0, 250), (250, 1000), (1000, 4000), (4000, 16000)], 1024, 0.1)
    assert [(s.start, s.stop) for s in four] == [(0, 18), (14, 70), (58, 282), (230, 1024)]
    no_overlap = band_slices([(0, 1000), (1000, 4000), (4000, 16000)], 128)
    assert [(s.start, s.stop) for s in no_overlap] == [(0, 8), (8, 32), (32, 128)]
    assert all(s.weight().eq(1).all() for s in no_overlap)
    # the lower band's weight falls linearly, 1 - (j + 0.5) / 102, over its last 102 bins
    expected = 1 - (np.arange(102) + 0.5) / 102
    np.testing.assert_allclose(low.weight()[-102:].numpy(), expected, atol=1e-7)
    assert low.weight()[:461].eq(1).all()


@pytest.mark.parametrize("name", [m for m in MODELS if m != "mbc"])
def test_weights_sum_to_one_and_joining_a_constant_gives_it(name: str) -> None:
    """For every scale of every model (1024 bins halved per scale): the bands cover every bin,
    their weights sum to 1 in each, and a joined constant is that constant everywhere."""
    for i, scale in enumerate(_net_config(name)["init_args"]["scales"]):
        if not scale["bands"]:
            continue
        n_bins = 1024 >> i
        limits = [(b["low_hz"], b["high_hz"]) for b in scale["bands"]]
        slices = band_slices(limits, n_bins, scale.get("overlap", 0.0))
        total = torch.zeros(n_bins)
        for s in slices:
            total[s.start : s.stop] += s.weight()
        torch.testing.assert_close(total, torch.ones(n_bins), atol=1e-6, rtol=0)
        joined = _constant_join(slices, n_bins)
        torch.testing.assert_close(joined, torch.full_like(joined, 7.0), atol=1e-5, rtol=0)


def test_bad_bands_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="must tile"):
        band_slices([(0, 8000)], 64)
    with pytest.raises(ValueError, match="contiguous"):
        band_slices([(0, 4000), (8000, 16000)], 64)
    with pytest.raises(ValueError, match="has no bin"):
        band_slices([(0, 250), (250, 16000)], 16)  # 250 Hz is bin 0 at 16 bins


# --- band locality -----------------------------------------------------------------------------


def _input_gradient(module: torch.nn.Module, output: callable, shape: tuple) -> torch.Tensor:
    module.train()
    x = torch.randn(*shape, requires_grad=True)
    output(module, x).abs().sum().backward()
    return x.grad.abs().sum(dim=(0, 1, 3))  # per bin


@pytest.mark.parametrize("overlap", [0.0, 0.1])
def test_band_functions_see_only_their_bins(overlap: float) -> None:
    """The gradient of a band function's output with respect to input bins outside its band
    (plus overlap) is zero, and non-zero inside; the full-band function sees every bin."""
    torch.manual_seed(0)
    bands = (
        Band(0, 4000, 3, layers=2, input_kernels=2),
        Band(4000, 16000, 2, layers=1, input_kernels=3),
    )
    n_bins = 128
    slices = band_slices([(b.low_hz, b.high_hz) for b in bands], n_bins, overlap)
    unit = MultiBandDenseLayer(5, bands, full_growth_rate=2, shared=2, overlap=overlap)
    chain = BandChainBlock(
        5,
        MultiBandBlockConfig(
            bands=bands, full_growth_rate=2, full_layers=1, overlap=overlap, shared_input=2
        ),
    )
    first = MultiBandInput(1, bands, full_kernels=2, overlap=overlap)
    shape5, shape1 = (2, 5, n_bins, 4), (2, 1, n_bins, 4)
    for b, s in enumerate(slices):
        for grad in (
            _input_gradient(unit, lambda m, x, b=b: m(x)[1][b], shape5),
            _input_gradient(
                chain, lambda m, x, b=b, s=s: m.chains[b](x[..., s.start : s.stop, :]), shape5
            ),
            _input_gradient(
                first, lambda m, x, b=b, s=s: m.band_convs[b](x[..., s.start : s.stop, :]), shape1
            ),
        ):
            outside = torch.cat([grad[: s.start], grad[s.stop :]])
            assert outside.abs().max() == 0
            assert (grad[s.start : s.stop] > 0).all()
    full = _input_gradient(unit, lambda m, x: m(x)[0][:, -2:], shape5)  # y_full: the last maps
    assert (full > 0).all()


# --- the experiments ---------------------------------------------------------------------------


def _hz(limits: tuple) -> list[tuple[float, float]]:
    return [(lo * 1000, hi * 1000) for lo, hi in limits]


@pytest.mark.parametrize("name", sorted(TABLE_4_8))
def test_experiment_equals_the_table_4_8_transcription(name: str) -> None:
    scales_t, (out_k, out_l) = TABLE_4_8[name]
    args = _net_config(name)["init_args"]
    assert (args["final_growth_rate"], args["final_layers"]) == (out_k, out_l)
    assert len(args["scales"]) == len(scales_t) == 4
    for scale, row in zip(args["scales"], scales_t, strict=True):
        limits, ks, inputs, layers, overlap, bc_in, bc_int, bc_out, forced = row
        bands = scale["bands"]
        assert [(b["low_hz"], b["high_hz"]) for b in bands] == _hz(limits)
        assert [b["growth_rate"] for b in bands] + [scale["full_growth_rate"]] == list(ks)
        got_inputs = [b.get("input_kernels") for b in bands] + [scale.get("full_input_kernels")]
        assert got_inputs == (list(inputs) if inputs else [None] * len(ks))
        if isinstance(layers, tuple):
            assert [b["layers"] for b in bands] + [scale["full_layers"]] == list(layers)
            assert "layers" not in scale
        else:
            assert scale["layers"] == layers
        assert scale.get("overlap") == overlap
        assert scale.get("shared_input") == bc_in
        assert scale.get("shared_internal") == bc_int
        assert scale.get("shared_output") == bc_out
        assert scale.get("forced_output") == forced


def test_mbc_experiment_equals_table_4_9() -> None:
    args = _net_config("mbc")["init_args"]
    assert args["cutoff_bin"] == 512  # 8 kHz: bin i is (i + 1) * 15.625 Hz
    assert (args["first_channels"], args["growth_rate"], args["layers"]) == (96, 16, 4)
    assert args["kernels_per_band"] == 16
    for name in MODELS:
        data = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["data"]
        assert data["batch_size"] == 8  # thesis 4.4.3 (MBC: spec A10)


@pytest.mark.parametrize("name", MODELS)
def test_parameters_and_macs_are_pinned(name: str) -> None:
    """As `make stats EXP=experiments/mmdensenet/<name>.yaml FRAMES=64` counts them."""
    config = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    stats = network_stats(config, 64)
    assert (stats["params"], stats["macs"]) == COUNTS[name]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_runs_and_keeps_the_input_shape(name: str) -> None:
    """A forward pass at 8 frames (64 frames: the MAC count above runs every model there, on
    the meta device; the slow end-to-end test trains MBDB-1 and MBC at 64); other frame counts
    are padded and cropped; bins that the scales cannot halve are refused."""
    net = _build(name).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 1024, 8))
        assert out.shape == (1, 1, 1024, 8)
        assert (out >= 0).all() and out.abs().max() > 0  # ReLU output, not dead
        if name in ("mbdb_1", "mbc"):
            assert net(torch.rand(1, 1, 1024, 10)).shape[-1] == 10
        with pytest.raises(ValueError, match="divisible by 8|two equal bands"):
            net(torch.rand(1, 1, 1020, 8))


# --- MBC -----------------------------------------------------------------------------------------


def test_mbc_stacking_and_reassembly_are_exact_inverses() -> None:
    x = torch.randn(2, 3, 64, 5)
    stacked = stack_bands(x, 2)
    assert stacked.shape == (2, 6, 32, 5)
    assert torch.equal(stacked[:, :3], x[..., :32, :]) and torch.equal(
        stacked[:, 3:], x[..., 32:, :]
    )
    assert torch.equal(unstack_bands(stacked, 2), x)
    y = torch.randn(2, 8, 16, 5)
    assert torch.equal(stack_bands(unstack_bands(y, 2), 2), y)


def test_mbc_assignment_groups_become_bands() -> None:
    """With an assignment weight that copies input map j to kernel j, band g's bins hold
    group g (kernels 0-15 -> 0-8 kHz, 16-31 -> 8-16 kHz)."""
    net = BandChannelDenseNet()
    assert net.assign.weight.shape == (32, 32, 3, 3)
    with torch.no_grad():
        net.assign.weight.zero_()
        for j in range(32):
            net.assign.weight[j, j, 1, 1] = 1.0
    maps = torch.randn(1, 32, 512, 8)
    bands = unstack_bands(net.assign(maps), 2)
    assert bands.shape == (1, 16, 1024, 8)
    torch.testing.assert_close(bands[..., :512, :], maps[:, :16])
    torch.testing.assert_close(bands[..., 512:, :], maps[:, 16:])
    # the moved block is the U-Net's last: its other six dense blocks keep k = 16, L = 4
    assert isinstance(net.unet.decoder[-1], torch.nn.Identity)
    assert count_parameters(net.unet) > 0


def test_fig_4_8_separates_kernels_that_read_only_their_band(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.zeros(32, 16, 3, 3)
    weight[:16, :8] = torch.randn(16, 8, 3, 3, generator=generator)
    weight[16:, 8:] = torch.randn(16, 8, 3, 3, generator=generator)
    points, band = kernel_norm_pca(weight)
    assert points.shape == (32, 2) and band.tolist() == [0] * 16 + [1] * 16
    first = points[:, 0]
    assert (first[:16] * first[16:].mean() < 0).all() and (first[16:] * first[:16].mean() < 0).all()
    # the figure from a finished MBC row's checkpoint, as Table 4.10 renders it
    net = BandChannelDenseNet()
    with torch.no_grad():
        net.assign.weight.copy_(torch.randn(32, 32, 3, 3, generator=generator))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, run / "checkpoints" / "best.ckpt")
    plan = SimpleNamespace(
        runnable=True, run_dir=run, resolved=yaml.safe_load((EXPERIMENTS / "mbc.yaml").read_text())
    )
    other = SimpleNamespace(runnable=True, run_dir=run, resolved={"model": {"init_args": {}}})
    path = tmp_path / "table-4.10-mbc_kernel_pca.png"
    measured = [None, {"result": {"checkpoint": "checkpoints/best.ckpt"}}]
    figure, _caption = RESULT_FIGURES["mbc_kernel_pca"]  # what `figures: [mbc_kernel_pca]` runs
    assert figure(None, [other, plan], measured, path) == path
    assert path.stat().st_size > 1000
    assert figure(None, [plan], [None], tmp_path / "none.png") is None  # not finished


# --- export --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mbdb_1", "mbc"])
def test_onnx_export_matches_pytorch(tmp_path, name: str) -> None:
    from lightning_modules.inference.export import TOLERANCE, export
    from lightning_modules.inference.runtime import load_exported
    from lightning_modules.separators.spectrogram import SpectrogramSeparator
    from tests.exported_models import randomise_statistics_

    separator = randomise_statistics_(SpectrogramSeparator(_build(name), context_frames=8)).eval()
    path, info = export(separator, tmp_path / "model.onnx", "onnx")
    assert (info.frames, info.bins) == (8, 1024)
    magnitude = torch.rand(1, 1024, 8, generator=torch.Generator().manual_seed(5)) * 4
    with torch.no_grad():
        expected = separator.estimate_magnitude(magnitude).numpy()
    got = load_exported(path, threads=1)(magnitude.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())
    assert np.abs(expected).max() > 0.1


# --- the table -----------------------------------------------------------------------------------


def test_table_4_10_plan_and_table_4_14_sources(tmp_path) -> None:
    from sweeps.plan import plan_table
    from sweeps.specs import load_table

    plans = {p.row.label: p for p in plan_table(load_table("4.10"), "smoke", tmp_path)}
    assert list(plans) == ["Baseline", *(f"MBDB-{i}" for i in range(1, 8)), "MBC"]
    assert len({p.run_dir for p in plans.values()}) == 9
    assert plans["MBDB-1"].resolved["data"]["batch_size"] == 4  # the smoke profile's
    summary = {p.row.label: p for p in plan_table(load_table("4.14"), "smoke", tmp_path)}
    assert summary["Baseline"].run_dir == plans["Baseline"].run_dir  # Table 4.3's run, once
    assert summary["Multi-band channels"].run_dir == plans["MBC"].run_dir
    assert summary["Multi-band dense blocks (MBDB-1)"].run_dir == plans["MBDB-1"].run_dir


@pytest.mark.slow
def test_table_4_10_end_to_end_at_ci(tmp_path, monkeypatch, isolated_cache) -> None:
    """``make table-4.10`` at the ci profile for its MBDB-1 and MBC rows (the other rows are
    the same mechanism; all nine take several minutes on 2 cores)."""
    from sweeps import specs
    from sweeps.__main__ import main as sweeps_main

    raw = yaml.safe_load((specs.TABLES / "table-4.10.yaml").read_text())
    raw["base"] = str(REPO / raw["base"])
    raw["rows"] = [r for r in raw["rows"] if r["label"] in ("MBDB-1", "MBC")]
    for row in raw["rows"]:
        row["base"] = str(REPO / row["base"])
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "table-4.10.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(specs, "TABLES", tables)
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["table", "4.10", "--profile", "ci", "--runs-dir", str(runs)]
    assert sweeps_main([*args, "--results-dir", str(results)]) == 0
    rows = json.loads((results / "ci" / "table-4.10.json").read_text())["rows"]
    assert [row["status"] for row in rows] == ["current", "current"]
    for row in rows:
        name = "mbdb_1" if row["label"] == "MBDB-1" else "mbc"
        assert row["measured"]["Parameters"] == COUNTS[name][0]
        assert row["measured"]["MACs"] == COUNTS[name][1]
        assert np.isfinite(row["measured"]["SDR"])
    md = Path(results / "ci" / "table-4.10.md").read_text()
    assert "| MBC |" in md and "5.53" in md
