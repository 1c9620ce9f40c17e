"""The DAE mapping-functions paper (issue #15, spec dae-nca.md A.10): parameter counts against
the spec's formulas, the networks' equations, the NCA where it can be exact (a linear regime, a
known linear map, the compositional formula against numpy), TOD-R and SNR on constructed cases,
and the paper's tables end to end at the ci profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import sweeps.specs as specs
from lightning_modules.evaluation.records import read_records
from lightning_modules.evaluation.tod import snr_db, tod_r
from lightning_modules.inference.stats import network_stats
from lightning_modules.nets.dae import DAE, MSSDAE, SkipFilteringDAE
from lightning_modules.separators.dae import (
    DAESeparator,
    compositional_couplings,
    fit_compositional,
    fit_student,
    linear_composition,
)
from sweeps.__main__ import main as sweeps_main
from sweeps.plan import plan_table
from sweeps.specs import load_table

BASE = Path(__file__).resolve().parents[1] / "experiments" / "dae_nca" / "base.yaml"


# --- the networks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bins", "expected"),
    [
        (DAE, 2049, 8_400_900),
        (MSSDAE, 2049, 16_801_800),
        (SkipFilteringDAE, 2049, 8_400_900),
        (DAE, 1025, 2_103_300),
        (MSSDAE, 744, 2_217_120),
    ],
)
def test_parameter_counts_are_the_specs(cls, bins: int, expected: int) -> None:
    with torch.device("meta"):
        net = cls(bins)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_sf_is_the_mixture_times_a_relu_mask_and_init_is_xavier_with_zero_bias() -> None:
    torch.manual_seed(0)
    net = SkipFilteringDAE(512)
    (enc, dec) = net.layers
    assert all(float(layer.bias.detach().abs().max()) == 0 for layer in net.layers)
    assert float(enc.weight.detach().std()) == pytest.approx(math.sqrt(1 / 512), rel=0.02)
    for layer in net.layers:  # give the biases a value, so the equation is checked with them
        torch.nn.init.normal_(layer.bias, std=0.1)
    x = torch.rand(7, 512)
    w1, b1 = enc.weight.detach().numpy(), enc.bias.detach().numpy()
    w2, b2 = dec.weight.detach().numpy(), dec.bias.detach().numpy()
    xn = x.numpy().astype(np.float64)
    mask = np.maximum(np.maximum(xn @ w1.T + b1, 0) @ w2.T + b2, 0)
    with torch.no_grad():
        assert np.allclose(net.last_layer_output(x).numpy(), mask, atol=1e-5)
        assert np.allclose(net.estimate(x).numpy(), xn * mask, atol=1e-5)
        # the suite's layout (B, 1, F, T): frame by frame over the time axis
        spectrogram = x.T[None, None]
        assert np.allclose(net(spectrogram)[0, 0].T.numpy(), xn * mask, atol=1e-5)
    with pytest.raises(ValueError, match="bins must be data.stft"):
        net(torch.rand(1, 1, 100, 3))


# --- the NCA -----------------------------------------------------------------------------------


def _linear_dae(bins: int = 8) -> DAE:
    """A DAE that is linear on non-negative inputs: zero biases, non-negative weights."""
    torch.manual_seed(1)
    net = DAE(bins)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.abs_()
            layer.bias.zero_()
    return net


def test_the_linear_composition_is_exact_in_a_linear_regime() -> None:
    net = _linear_dae()
    x = torch.rand(50, 8)
    with torch.no_grad():
        z = net.last_layer_output(x)
    c = linear_composition(net)
    w_enc, w_dec = (layer.weight.detach().numpy() for layer in net.layers)
    assert np.allclose(c.numpy(), w_dec @ w_enc, atol=1e-6)
    assert np.allclose(z.numpy(), x.numpy() @ (w_dec @ w_enc).T, atol=1e-5)
    assert snr_db(z.numpy(), (x @ c.T).numpy()) > 100


def test_the_compositional_family_holds_a_linear_networks_matrix_exactly() -> None:
    """With A_i such that ReLU((W_i + b_i) A_i^T) is all ones, the compositional C is the
    linear composition: the strategy can represent a linear network's map to float precision."""
    net = _linear_dae()
    layers = [
        (layer.weight.detach().double(), layer.bias.detach().double()) for layer in net.layers
    ]
    ones = torch.ones(8, 8, dtype=torch.float64)
    free = [torch.linalg.solve(w + b, ones).T for w, b in layers]  # (W + b) A^T = 1
    c = compositional_couplings(layers, free)
    assert torch.allclose(c, linear_composition(net).double(), atol=1e-9)


def test_the_student_recovers_a_known_linear_map() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(256, 16, generator=generator)
    c_true = torch.randn(16, 16, generator=generator)
    z = x @ c_true.T
    c = fit_student(x, z, iterations=3000, lr=1e-2, seed=1)
    c = fit_student(x, z, iterations=1000, lr=1e-3, init=c)
    error = float(torch.linalg.norm(c - c_true) / torch.linalg.norm(c_true))
    assert error < 0.01


def test_compositional_c_matches_numpy_and_only_the_free_matrices_learn() -> None:
    rng = np.random.default_rng(0)
    n = 6
    layers = [(rng.normal(size=(n, n)), rng.normal(size=n)) for _ in range(3)]
    free = [rng.normal(size=(n, n)) for _ in range(3)]
    expected = np.eye(n)
    for (w, b), a in zip(layers, free, strict=True):
        # (W + b): row r, column j gets b[j]; Phi = ReLU((W + b) A^T); Psi = Phi * W
        tilde = np.array([[w[r, j] + b[j] for j in range(n)] for r in range(n)])
        expected = (np.maximum(tilde @ a.T, 0) * w) @ expected
    torch_layers = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in layers]
    c = compositional_couplings(torch_layers, [torch.from_numpy(a) for a in free])
    assert np.allclose(c.numpy(), expected, atol=1e-10)
    # fitting: the model's weights unchanged, the loss lower than at the start
    torch.manual_seed(0)
    net = MSSDAE(n)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.rand(40, n)
    with torch.no_grad():
        z = net.last_layer_output(x)
    start = fit_compositional(net, x, z, iterations=0, lr=1e-2)
    fitted = fit_compositional(net, x, z, iterations=300, lr=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert all(p.grad is None for p in net.parameters())
    assert (z - x @ fitted.T).abs().sum() < 0.5 * (z - x @ start.T).abs().sum()


# --- the measures ------------------------------------------------------------------------------


def test_tod_r_on_constructed_matrices() -> None:
    assert tod_r(np.array([[2.0, -1.0], [-1.0, 2.0]])) == pytest.approx(2.0)
    assert tod_r(np.array([[-3.0, 1.0], [1.0, -3.0]])) == pytest.approx(3.0)  # |C| first
    eps, n = 0.5, 4
    near = np.eye(n) + eps * (np.ones((n, n)) - np.eye(n))
    assert tod_r(near) == pytest.approx(1 / (eps * (n - 1)))  # 0.667
    assert tod_r(np.eye(5)) == math.inf
    c = np.random.default_rng(0).normal(size=(9, 9))
    assert tod_r(-3.7 * c) == pytest.approx(tod_r(c))
    assert tod_r(c, scale=9.0) == pytest.approx(9.0 * tod_r(c))
    with pytest.raises(ValueError, match="square"):
        tod_r(np.ones((2, 3)))


def test_snr_on_constructed_signals() -> None:
    z = np.random.default_rng(0).random((5, 4))
    assert snr_db(z, z) == math.inf
    assert snr_db(z, 0.9 * z) == pytest.approx(20.0)  # error = 0.1 z: 10 log10(100)
    assert snr_db(z, np.zeros_like(z)) == pytest.approx(0.0)


def test_a_segments_records_follow_the_specs_definitions() -> None:
    """SF on one segment: the model's SNR against the true vocals is its x * mask; the
    identity baseline's SNR is snr_db(X * Z, X) (A-6: the mixture as the estimate); the
    linear baseline's TOD-R is that of W_dec W_enc with s = N - 1."""
    torch.manual_seed(0)
    model = DAESeparator(
        SkipFilteringDAE(65),
        stft={"n_fft": 128, "hop": 32, "win_length": 65, "window": "hamming", "keep_dc": True},
        nca_iterations=2,
        eval_workers=0,
    )
    x, v = torch.rand(30, 65), torch.rand(30, 65)
    matrices = model._segment_records("t", 0, x, v, 30 * 32)
    records = {r["target"]: r for r in model._records}
    with torch.no_grad():
        mask = model.net.last_layer_output(x).numpy()
    xn, vn = x.numpy(), v.numpy()
    assert records["model"]["SNR_true"] == pytest.approx(snr_db(vn, xn * mask))
    assert records["identity"]["SNR"] == pytest.approx(snr_db(xn * mask, xn))
    assert records["identity"]["SNR_true"] == pytest.approx(snr_db(vn, xn))
    assert records["identity"]["TOD-R"] is None  # +inf
    w_enc, w_dec = (layer.weight.detach().numpy() for layer in model.net.layers)
    assert records["linear"]["TOD-R"] == pytest.approx(tod_r(w_dec @ w_enc, scale=64), rel=1e-5)
    linear = xn * (xn @ (w_dec @ w_enc).T)  # SF: the mask of the approximation on the mixture
    assert records["linear"]["SNR"] == pytest.approx(snr_db(xn * mask, linear), rel=1e-4)
    assert set(matrices) == {"student", "compositional", "linear", "identity"}
    assert all(p.grad is None for p in model.net.parameters())


# --- the tables --------------------------------------------------------------------------------


def test_the_tables_rows_have_the_specs_networks_and_scaled_nca(tmp_path: Path) -> None:
    """Every table resolves to the three networks at N = 2049 (the same runs for all three
    tables), the smoke and ci profiles lower the NCA's budget, never the architecture."""
    plans = {t: plan_table(load_table(t), "ci", tmp_path) for t in ("dae-1", "dae-2", "dae-3")}
    for table, rows in plans.items():
        found = [network_stats(p.resolved, macs=False)["params"] for p in rows]
        assert found == [8_400_900, 16_801_800, 8_400_900], table
        assert [p.run_dir for p in rows] == [p.run_dir for p in plans["dae-1"]]
    model = plans["dae-1"][0].resolved["model"]["init_args"]
    assert (model["nca_iterations"], model["nca_max_segments"]) == (2, 1)
    smoke = plan_table(load_table("dae-1"), "smoke", tmp_path)[2].resolved
    assert smoke["model"]["init_args"]["nca_iterations"] == 20
    assert network_stats(smoke, macs=False)["params"] == 8_400_900
    data = smoke["data"]
    assert (data["rate"], data["stft"]["n_fft"], data["stft"]["hop"]) == (44100, 4096, 384)
    assert (data["mixing"], data["context_frames"], data["valid_fraction"]) == ("coherent", 1, 0)


def test_the_full_profile_keeps_the_papers_protocol(tmp_path, monkeypatch) -> None:
    from tests.conftest import fake_musdb_root

    monkeypatch.setenv("MUSDB_ROOT", str(fake_musdb_root(tmp_path / "musdb")))
    full = plan_table(load_table("dae-1"), "full", tmp_path)[0].resolved
    model = full["model"]["init_args"]
    assert (model["nca_iterations"], model["nca_max_segments"]) == (600, None)
    assert (model["lr"], model["plateau_factor"], model["stop_patience"]) == (1e-4, 0.5, 4)
    assert full["data"]["batch_size"] == 1024 and full["data"]["excerpt_seconds"] is None


def _small_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's table specs as they are, on a copy of the base experiment with a small STFT
    (512 / 128, window 257: 257 bins; tests may change N, profiles may not)."""
    tables = tmp_path / "tables"
    tables.mkdir()
    base = yaml.safe_load(BASE.read_text())
    base["data"]["stft"].update(n_fft=512, hop=128, win_length=257)
    base["model"]["init_args"]["net"]["init_args"]["bins"] = 257
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    for path in sorted(specs.TABLES.glob("table-dae-*.yaml")):
        raw = yaml.safe_load(path.read_text())
        raw["base"] = str(tmp_path / "base.yaml")
        for row in raw["rows"]:
            if "net.class_path" in str(row["overrides"]):
                row["overrides"]["model.init_args.net.init_args.bins"] = 257
        (tables / path.name).write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(specs, "TABLES", tables)


@pytest.mark.slow
def test_the_papers_tables_end_to_end(tmp_path, monkeypatch, isolated_cache) -> None:
    """``make table-dae-1``, ``-2`` and ``-3`` at the ci profile (257 bins): three trainings
    shared by the three tables, the NCA's records in each run's scores.json, our mean (std)
    beside the published cells the paper lost ('–')."""
    _small_tables(tmp_path, monkeypatch)
    results, runs = tmp_path / "results", tmp_path / "runs"
    for table in ("dae-1", "dae-2", "dae-3"):
        args = ["table", table, "--profile", "ci", "--runs-dir", str(runs)]
        assert sweeps_main([*args, "--results-dir", str(results)]) == 0
    rendered = {
        t: json.loads((results / "ci" / f"table-{t}.json").read_text())["rows"]
        for t in ("dae-1", "dae-2", "dae-3")
    }
    one = {row["label"]: row for row in rendered["dae-1"]}
    assert all(row["status"] == "current" for row in one.values())
    for table in ("dae-2", "dae-3"):
        assert [r["run"] for r in rendered[table]] == [r["run"] for r in rendered["dae-1"]]
    for label, row in one.items():
        records = read_records(runs / row["run"] / "scores.json")
        by_target: dict[str, list] = {}
        for record in records:
            by_target.setdefault(record["target"], []).append(record)
        # 2 test tracks x 1 segment (ci: nca_max_segments 1) per mapping, plus the model's own
        assert {t: len(v) for t, v in by_target.items()} == {
            "model": 2,
            "student": 2,
            "compositional": 2,
            "linear": 2,
            "identity": 2,
        }
        assert all(r["TOD-R"] is None for r in by_target["identity"])  # C = I: +inf
        mean = np.mean([r["TOD-R"] for r in by_target["compositional"]])
        assert row["measured"]["compositional/TOD-R"] == pytest.approx(mean)
        matrices = np.load(sorted((runs / row["run"] / "nca").glob("*.npz"))[0])
        assert matrices["student"].shape == (257, 257)
        assert tod_r(matrices["compositional"], scale=256) == pytest.approx(
            by_target["compositional"][0]["TOD-R"], rel=1e-4
        )
        assert label != "MSS-DAE" or row["measured"]["Parameters"] == 4 * 257**2 + 4 * 257
    md = (results / "ci" / "table-dae-1.md").read_text()
    assert "12 times smaller" in md and "| ? |" not in md  # lost cells: '–', not printed
    assert "| – |" in md and "model.init_args.nca_iterations=2" in md
    two = (results / "ci" / "table-dae-2.md").read_text()
    assert "greater than [ ] dB" in two
