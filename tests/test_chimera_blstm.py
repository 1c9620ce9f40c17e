"""The BLSTM chimera network for music (issue #16, spec chimera-blstm.md): parameter counts and
MACs against the spec, K-means on ideal embeddings, the losses against brute-force sums, the
SDR improvement on hand-made signals, the features, the oracle reconstruction, and the
paper's tables end to end at the ci profile."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
import yaml
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

import sweeps.specs as specs
from lightning_modules.dsp.spectral import wiener_like_mask
from lightning_modules.evaluation.records import (
    best_permutation,
    read_records,
    sdr_improvement_records,
    si_snr,
    write_records,
)
from lightning_modules.inference.stats import count_macs, count_parameters, network_stats
from lightning_modules.nets.blstm import BLSTMChimeraNet
from lightning_modules.separators.blstm_chimera import (
    BLSTMChimeraSeparator,
    delta,
    mmsa_loss,
    msa_loss,
)
from lightning_modules.separators.clustering import (
    kmeans_labels,
    kmeans_masks,
    low_frequency_rule,
    mel_centre_frequencies,
)
from lightning_modules.separators.losses import (
    deep_clustering_loss,
    dominant_source_labels,
    flatten_embeddings,
)
from sweeps.__main__ import main as sweeps_main
from sweeps.plan import plan_table
from sweeps.runs import RESULT
from sweeps.specs import load_table

BASE = Path(__file__).resolve().parents[1] / "experiments" / "chimera_blstm" / "base.yaml"


def _meta_net(**kwargs) -> BLSTMChimeraNet:
    with torch.device("meta"):  # 24 M parameters counted, nothing allocated
        return BLSTMChimeraNet(**kwargs)


def _model(alpha: float = 0.5, mi_loss: str = "msa", **kwargs) -> BLSTMChimeraSeparator:
    """A tiny chimera model on 20 Mel bins + deltas (16 kHz, 512 / 128)."""
    torch.manual_seed(0)
    net = BLSTMChimeraNet(n_inputs=40, n_mels=20, hidden=8, layers=1, embedding_dim=4)
    return BLSTMChimeraSeparator(
        net,
        alpha=alpha,
        mi_loss=mi_loss,
        mel_bins=20,
        rate=16000,
        context_frames=16,
        stft={"n_fft": 512, "hop": 128},
        eval_workers=0,
        **kwargs,
    )


# --- the network -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 24_241_300),  # Table 2: I = 300, F = 150, D = 20
        ({"mask_head": False}, 24_235_000),  # Table 2's DC-only network
        ({"embedding_dim": 10}, 22_736_800),  # Table 3, D = 10
        ({"n_inputs": 150, "embedding_dim": 10}, 22_136_800),  # Table 4, mel150
        ({"n_inputs": 200, "n_mels": 200, "embedding_dim": 10}, 22_838_400),  # mel200
        ({"n_inputs": 300, "n_mels": 300, "embedding_dim": 10}, 24_241_600),  # mel300
        ({"hidden": 250}, 7_125_300),  # the other reading of "500 hidden units" (B.8)
    ],
)
def test_parameter_counts_are_the_specs(kwargs: dict, expected: int) -> None:
    assert count_parameters(_meta_net(**kwargs)) == expected


def test_the_macs_counter_counts_the_lstms() -> None:
    # Spec B.8 at 100 frames: LSTMs 100 x 2 directions x 4 gates x 500 x ((300 + 500) +
    # 3 x (1000 + 500)) = 2.120 G, Z 100 x 1000 x 3000 = 0.300 G, MI 100 x 150 x 20 x 2.
    lstm = 100 * 2 * 4 * 500 * ((300 + 500) + 3 * (1000 + 500))
    assert lstm == 2_120_000_000
    expected = lstm + 100 * 1000 * 3000 + 100 * 150 * 20 * 2
    assert count_macs(_meta_net(), 100) == expected == 2_420_600_000
    # what `make stats EXP=experiments/chimera_blstm/base.yaml FRAMES=100` prints
    stats = network_stats(yaml.safe_load(BASE.read_text()), 100)
    assert stats == {"params": 24_241_300, "macs": 2_420_600_000}


def test_heads_embeddings_unit_length_masks_a_partition_in_label_order() -> None:
    torch.manual_seed(0)
    net = BLSTMChimeraNet(n_inputs=12, n_mels=6, hidden=5, layers=2, embedding_dim=3)
    features = torch.randn(2, 12, 7)
    out = net(features)
    assert out["embedding"].shape == (2, 3, 6, 7) and out["masks"].shape == (2, 2, 6, 7)
    norms = out["embedding"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    masks = out["masks"]
    assert masks.min() >= 0 and masks.max() <= 1
    torch.testing.assert_close(masks.sum(dim=1), torch.ones(2, 6, 7))
    # tanh before the norm: by hand from Z for bin (f=4, t=2) of the first example
    z = net.body(features)  # (B, T, F, D)
    by_hand = torch.tanh(z[0, 2, 4]) / torch.tanh(z[0, 2, 4]).norm()
    torch.testing.assert_close(out["embedding"][0, :, 4, 2], by_hand)
    logits = z[0, 2, 4] @ net.mask_weight[4] + net.mask_bias[4]
    torch.testing.assert_close(out["masks"][0, :, 4, 2], torch.softmax(logits, dim=0))
    # flattened like the labels: row f * T + t is bin (f, t)
    flat = flatten_embeddings(out["embedding"])
    torch.testing.assert_close(flat[0, 4 * 7 + 2], out["embedding"][0, :, 4, 2])
    assert "masks" not in BLSTMChimeraNet(12, 6, 5, 1, 3, mask_head=False)(features)


# --- K-means on ideal embeddings ---------------------------------------------------------------


def _agreement(masks: torch.Tensor, ibm: torch.Tensor) -> float:
    """Share of bins where the masks equal the IBM, under the better of the two orders."""
    return max(
        float((masks[list(order)] == ibm).all(dim=0).float().mean()) for order in ((0, 1), (1, 0))
    )


def test_kmeans_on_ideal_embeddings_recovers_the_ideal_binary_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    sources = torch.rand(1, 2, 150, 100, generator=generator, dtype=torch.float64)  # Mel R_c
    labels = dominant_source_labels(sources)  # (1, TF, 2)
    ibm = labels[0].T.reshape(2, 150, 100)
    q = torch.linalg.qr(torch.randn(20, 2, generator=generator, dtype=torch.float64))[0].T
    embeddings = labels @ q  # V = Y Q, Q with orthonormal rows: unit rows
    assert deep_clustering_loss(embeddings, labels).abs() < 1e-6
    as_net = embeddings[0].T.reshape(20, 150, 100)  # (D, F, T), rows f-major
    masks = kmeans_masks(as_net, seed=0)
    assert _agreement(masks, ibm) == 1.0
    noisy = embeddings + 0.1 * torch.randn(
        embeddings.shape, generator=generator, dtype=torch.float64
    )
    noisy = torch.nn.functional.normalize(noisy, dim=-1)
    assert _agreement(kmeans_masks(noisy[0].T.reshape(20, 150, 100)), ibm) >= 0.99
    # the masks applied to the Mel spectrogram: the IBM-masked spectrogram, best order
    mixture = sources.sum(dim=1)[0]
    ideal = ibm * mixture
    best = min((masks[list(order)] * mixture - ideal).abs().max() for order in ((0, 1), (1, 0)))
    assert best == 0


def test_kmeans_finds_scikit_learns_clustering() -> None:
    from sklearn.cluster import KMeans

    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(2, 10, generator=generator, dtype=torch.float64)
    which = torch.randint(2, (3000,), generator=generator)
    points = centres[which] + 0.9 * torch.randn(3000, 10, generator=generator, dtype=torch.float64)
    labels, inertia = kmeans_labels(points, seed=0)
    theirs = KMeans(2, init="k-means++", n_init=10, random_state=0).fit(points.numpy())
    assert inertia == pytest.approx(theirs.inertia_, rel=1e-9)
    same = (labels.numpy() == theirs.labels_).mean()
    assert max(same, 1 - same) == 1.0
    by_hand = sum(
        float((points[labels == k] - points[labels == k].mean(0)).square().sum()) for k in (0, 1)
    )
    assert inertia == pytest.approx(by_hand, rel=1e-9)
    again, _ = kmeans_labels(points, seed=0)
    assert torch.equal(again, labels)  # seeded


def test_the_mirex_rule_calls_the_mask_with_most_low_bins_the_accompaniment() -> None:
    frequencies = mel_centre_frequencies(16000, 150)
    low = frequencies < 200.0
    assert 0 < low.sum() < 150 and frequencies[0] > 0
    masks = torch.zeros(2, 150, 10)
    masks[1, low] = 1.0  # cluster 1 holds the bass register
    masks[0, ~low] = 1.0
    assert low_frequency_rule(masks, frequencies) == (0, 1)  # (vocals, accompaniment)
    assert low_frequency_rule(masks.flip(0), frequencies) == (1, 0)


# --- losses --------------------------------------------------------------------------------------


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_deep_clustering_term_is_l_dc_over_tf() -> None:
    b, f, t, d = 2, 20, 10, 5
    embeddings = torch.nn.functional.normalize(_random((b, f * t, d), 0) - 0.5, dim=-1)
    labels = dominant_source_labels(_random((b, 2, f, t), 1))
    brute = []
    for v, y in zip(embeddings, labels, strict=True):  # ||V V^T - Y Y^T||_F^2 over (TF)^2 pairs
        total = sum(
            (float(v[i] @ v[j]) - float(y[i] @ y[j])) ** 2
            for i in range(f * t)
            for j in range(f * t)
        )
        brute.append(total / (f * t))
    assert float(f * t * deep_clustering_loss(embeddings, labels)) == pytest.approx(
        np.mean(brute), rel=1e-5
    )


def _batch(seed: int = 2) -> dict:
    audio = 0.1 * (2 * _random((2, 2, 1, 512 + 15 * 128), seed).float() - 1)
    return {"mixture": audio.sum(dim=1), "targets": audio}


def test_the_chimera_loss_is_alpha_dc_plus_one_minus_alpha_mi() -> None:
    batch = _batch()
    with torch.no_grad():
        terms = {
            a: _model(alpha=a, test_head="dc" if a == 1 else "mi").loss_terms(batch)
            for a in (0.0, 0.3, 1.0)
        }
    assert terms[1.0]["mi"] == 0 and terms[1.0]["loss"] == terms[1.0]["dc"]
    assert terms[0.0]["dc"] == 0 and terms[0.0]["loss"] == terms[0.0]["mi"]
    mixed = terms[0.3]
    assert float(mixed["loss"]) == pytest.approx(
        0.3 * float(mixed["dc"]) + 0.7 * float(mixed["mi"])
    )
    # the DC term by brute force from the model's own embeddings and labels (B = 2 segments)
    model = _model(alpha=0.3)
    mixture = model.mel(batch["mixture"][:, 0])
    sources = model.mel(batch["targets"][:, :, 0])
    v = flatten_embeddings(model(mixture)["embedding"]).detach().double()
    y = dominant_source_labels(sources).double()
    tf = v.shape[1]
    brute = [float(((vb @ vb.T - yb @ yb.T) ** 2).sum()) / tf for vb, yb in zip(v, y, strict=True)]
    assert float(model.loss_terms(batch)["dc"].detach()) == pytest.approx(np.mean(brute), rel=1e-4)


def test_msa_and_mmsa_against_brute_force_sums() -> None:
    b, c, f, t = 2, 2, 3, 4
    masks = torch.softmax(_random((b, c, f, t), 3), dim=1)
    sources = _random((b, c, f, t), 4)
    mixture = sources.sum(dim=1) * 0.9  # some interference
    msa = mmsa = 0.0
    for i, j, k, n in itertools.product(range(b), range(c), range(f), range(t)):
        s, r, m = float(mixture[i, k, n]), float(sources[i, j, k, n]), float(masks[i, j, k, n])
        power = sum(float(sources[i, jj, k, n]) ** 2 for jj in range(c))
        o = r**2 / power  # the Wiener-like mask of [15]
        msa += (r - m * s) ** 2
        mmsa += ((o - m) * s) ** 2
    assert float(msa_loss(masks, mixture, sources)) == pytest.approx(msa / b, rel=1e-6)
    assert float(mmsa_loss(masks, mixture, sources)) == pytest.approx(mmsa / b, rel=1e-6)
    reference = sources.square() / sources.square().sum(dim=1, keepdim=True)
    torch.testing.assert_close(wiener_like_mask(sources, alpha=2.0), reference)
    assert float(mmsa_loss(reference, mixture, sources)) == pytest.approx(0.0, abs=1e-12)


def test_msa_cannot_reach_zero_under_destructive_interference() -> None:
    # one bin: |mixture| 0.5 smaller than the vocals' 1.0 (they partly cancel)
    mixture = torch.tensor([[[0.5]]])
    sources = torch.tensor([[[[1.0]], [[0.5]]]])
    losses = []
    for m in torch.linspace(0, 1, 101):  # every pair of masks that sums to 1
        masks = torch.stack([m, 1 - m]).reshape(1, 2, 1, 1)
        losses.append(float(msa_loss(masks, mixture, sources)))
    # (1 - 0.5 m)^2 + (0.5 m)^2 falls towards m = 1, the mask that keeps the whole mixture
    assert min(losses) == pytest.approx(0.5) and losses[-1] == pytest.approx(0.5)
    reference = wiener_like_mask(sources, alpha=2.0)
    assert float(mmsa_loss(reference, mixture, sources)) == pytest.approx(0.0, abs=1e-12)


# --- features -----------------------------------------------------------------------------------


def test_delta_features_are_librosas() -> None:
    x = _random((3, 5, 40), 5)
    expected = librosa.feature.delta(x.numpy(), width=9, order=1, axis=-1)
    np.testing.assert_allclose(delta(x).numpy(), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="at least width=9"):
        delta(x[..., :8])


# --- the metric ---------------------------------------------------------------------------------


def test_sdr_improvement_is_sdr_of_the_estimate_minus_sdr_of_the_mixture() -> None:
    n = 16000
    t = np.arange(n) / n
    vocals = np.sin(2 * np.pi * 440 * t)  # zero mean; orthogonal to the others, same energy
    music = np.cos(2 * np.pi * 440 * t)
    noise = np.sin(2 * np.pi * 1000 * t)
    mixture = vocals + music  # SI-SNR(mixture, vocals) = 10 log10(|v|^2 / |m|^2) = 0 dB
    estimates = np.stack([vocals + 0.1 * noise, music + 0.01 * noise])[:, None]  # 20 dB, 40 dB
    references = np.stack([vocals, music])[:, None]
    records = sdr_improvement_records(
        "hand", estimates, references, mixture[None], ["vocals", "accompaniment"], 16000
    )
    assert [r["target"] for r in records] == ["vocals", "accompaniment"]
    assert [r["SDR_mixture"] for r in records] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert [r["SDRi"] for r in records] == pytest.approx([20.0, 40.0], abs=1e-6)
    assert records[0]["length"] == 1.0
    # scale invariance, mixture = 0 dB improvement, torchmetrics' SI-SDR (zero mean)
    assert si_snr(3 * vocals + 1e-3 * noise, vocals) > 60
    mixture_records = sdr_improvement_records(
        "mix", np.stack([mixture, mixture])[:, None], references, mixture[None], "va", 16000
    )
    assert [r["SDRi"] for r in mixture_records] == [0.0, 0.0]
    rng = np.random.default_rng(0)
    estimate, reference = rng.standard_normal(4000) + 0.3, rng.standard_normal(4000) - 0.2
    estimate += reference
    theirs = scale_invariant_signal_distortion_ratio(
        torch.from_numpy(estimate), torch.from_numpy(reference), zero_mean=True
    )
    assert si_snr(estimate, reference) == pytest.approx(float(theirs), abs=1e-4)


def test_the_best_permutation_undoes_a_swap_of_the_clusters(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    references = rng.standard_normal((2, 1, 800))
    estimates = references + 0.3 * rng.standard_normal((2, 1, 800))
    assert best_permutation(estimates, references) == (0, 1)
    assert best_permutation(estimates[::-1], references) == (1, 0)
    swapped = estimates[::-1][list(best_permutation(estimates[::-1], references))]
    np.testing.assert_array_equal(swapped, estimates)
    records = sdr_improvement_records("x", estimates, references, references.sum(0), "va", 8000)
    path = write_records(tmp_path / "run" / "scores.json", records)
    assert read_records(path) == json.loads(json.dumps(records))


# --- reconstruction -----------------------------------------------------------------------------


@pytest.mark.parametrize("stft", [(512, 128), (1024, 256)], ids=["512-128", "1024-256"])
@pytest.mark.parametrize("reconstruction", ["pinv", "interpolate"])
def test_ideal_binary_mel_masks_reconstruct_well(synthetic_dm_kwargs, stft, reconstruction):
    """Spec B.11 (8): the oracle through the same reconstruction as the model is clearly
    positive. (Without the rank cut of the pseudo-inverse, 512 / 128 gives -8 dB here.)"""
    from datamodules.musdb_datamodule import MUSDBDataModule

    dm = MUSDBDataModule(**{**synthetic_dm_kwargs, "mixing": "remix_0db", "test_max_seconds": 3.0})
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    torch.manual_seed(0)
    net = BLSTMChimeraNet(n_inputs=300, n_mels=150, hidden=4, layers=1)
    model = BLSTMChimeraSeparator(
        net, stft={"n_fft": stft[0], "hop": stft[1]}, reconstruction=reconstruction
    )
    mixture, targets = batch["mixture"], batch["targets"]
    spectrum = model.spectrum(mixture[0], center=True)
    heads = {"spectrum": spectrum, "mel": model.front_end.to_mel(spectrum.abs())}
    sources = model.mel(targets[:, 0], center=True)
    ibm = dominant_source_labels(sources[None])[0].T.reshape(sources.shape)
    estimates = model.reconstruct(ibm, heads, mixture.shape[-1])
    records = sdr_improvement_records(
        "oracle", estimates.numpy(), targets.numpy(), mixture.numpy(), "va", 16000
    )
    assert min(r["SDRi"] for r in records) > 8.0, records


# --- options --------------------------------------------------------------------------------------


def test_options_that_cannot_work_are_refused_with_their_name() -> None:
    net = BLSTMChimeraNet(n_inputs=40, n_mels=20, hidden=4, layers=1)
    kwargs = {"mel_bins": 20, "context_frames": 16}
    with pytest.raises(ValueError, match="n_inputs"):
        BLSTMChimeraSeparator(net, mel_bins=20, deltas=False, context_frames=16)
    with pytest.raises(ValueError, match="mi_loss"):
        BLSTMChimeraSeparator(net, mi_loss="sdr", **kwargs)
    with pytest.raises(ValueError, match="test_head 'dc' needs"):
        BLSTMChimeraSeparator(net, alpha=0.0, test_head="dc", **kwargs)
    with pytest.raises(ValueError, match="test_head 'mi' needs"):
        BLSTMChimeraSeparator(net, alpha=1.0, **kwargs)
    no_head = BLSTMChimeraNet(n_inputs=40, n_mels=20, hidden=4, layers=1, mask_head=False)
    with pytest.raises(ValueError, match="has none"):
        BLSTMChimeraSeparator(no_head, alpha=0.5, test_head="dc", **kwargs)
    with pytest.raises(ValueError, match="data.targets vocals"):
        BLSTMChimeraSeparator(net, targets="all", **kwargs)
    with pytest.raises(ValueError, match="at least 9 frames"):
        BLSTMChimeraSeparator(net, mel_bins=20, context_frames=8)


# --- the tables ---------------------------------------------------------------------------------


def test_the_tables_rows_have_the_specs_networks(tmp_path: Path) -> None:
    """Every row of Tables 2-4 resolves (full protocol hashes aside) to the spec's network and
    its data settings; Table 3's MSA row is Table 2's CHI_0.1 run."""
    counts = {
        "chimera-2": [24_235_000] + [24_241_300] * 5,
        "chimera-3": [24_241_300, 24_241_300, 22_736_800],
        "chimera-4": [22_136_800, 22_838_400, 22_838_400, 24_241_600],
    }
    plans = {table: plan_table(load_table(table), "ci", tmp_path) for table in counts}
    for table, expected in counts.items():
        found = [network_stats(p.resolved, macs=False)["params"] for p in plans[table]]
        assert found == expected, table
    chi = {p.row.label: p for p in plans["chimera-2"]}
    assert chi["CHI_0.1-DC"].stages[0].run_dir == chi["CHI_0.1-MI"].run_dir
    assert chi["CHI_0.1-DC"].resolved["model"]["init_args"]["test_head"] == "dc"
    assert plans["chimera-3"][0].run_dir == chi["CHI_0.1-MI"].run_dir
    last = plans["chimera-4"][-1].resolved["data"]
    assert (last["rate"], last["stft"]["n_fft"], last["stft"]["hop"]) == (22050, 2048, 512)


def test_the_tables_plan_at_the_smoke_and_full_profiles(tmp_path, monkeypatch) -> None:
    """Smoke: the profile's scale, the same networks; full: the paper's protocol on MUSDB18."""
    from tests.conftest import fake_musdb_root

    monkeypatch.delenv("MUSDB_ROOT", raising=False)
    smoke = plan_table(load_table("chimera-2"), "smoke", tmp_path)
    resolved = smoke[3].resolved  # CHI_0.1-MI
    assert resolved["trainer"]["max_epochs"] == 3 and resolved["data"]["batch_size"] == 4
    assert network_stats(resolved, macs=False)["params"] == 24_241_300
    monkeypatch.setenv("MUSDB_ROOT", str(fake_musdb_root(tmp_path / "musdb")))
    full = plan_table(load_table("chimera-2"), "full", tmp_path)[3].resolved
    data, trainer = full["data"], full["trainer"]
    assert (trainer["max_epochs"], trainer["devices"], trainer["accelerator"]) == (100, 1, "auto")
    assert (data["batch_size"], data["context_frames"], data["test_max_seconds"]) == (32, 100, 30)
    assert (data["rate"], data["stft"]["n_fft"], data["stft"]["hop"]) == (16000, 512, 128)
    assert data["mixing"] == "remix_0db" and data["excerpt_seconds"] is None


def _small_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The paper's table specs as they are, on a copy of the base experiment whose BLSTM has
    2 layers of 16 units (the rows change no width): seconds per run at the ci profile."""
    tables = tmp_path / "tables"
    tables.mkdir()
    base = yaml.safe_load(BASE.read_text())
    base["model"]["init_args"]["net"]["init_args"].update(hidden=16, layers=2)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    for path in sorted(specs.TABLES.glob("table-chimera-*.yaml")):
        raw = yaml.safe_load(path.read_text())
        raw["base"] = str(tmp_path / "base.yaml")
        (tables / path.name).write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(specs, "TABLES", tables)
    return tables


@pytest.mark.slow
def test_the_papers_tables_end_to_end(tmp_path, monkeypatch, isolated_cache) -> None:
    """``make table-chimera-2`` and ``-3`` at the ci profile (a small BLSTM): 4 + 2 trainings,
    2 DC re-tests, both heads of one chimera run, SDRi from the runs' scores.json beside the
    published numbers, iKala cells unavailable; ``-1`` published only."""
    _small_tables(tmp_path, monkeypatch)
    results, runs = tmp_path / "results", tmp_path / "runs"
    for table in ("chimera-2", "chimera-3", "chimera-1"):
        args = ["table", table, "--profile", "ci", "--runs-dir", str(runs)]
        assert sweeps_main([*args, "--results-dir", str(results)]) == 0
    table = json.loads((results / "ci" / "table-chimera-2.json").read_text())
    rows = {row["label"]: row for row in table["rows"]}
    assert all(row["status"] == "current" for row in rows.values())
    # one training, two heads: the DC row re-tests the MI row's run
    assert rows["CHI_0.1-DC"]["stages"][0] == rows["CHI_0.1-MI"]["run"]
    for label, row in rows.items():
        run = runs / row["run"]
        result = json.loads((run / RESULT).read_text())
        records = read_records(run / "scores.json")
        head = "dc" if label.endswith("DC") else "mi"
        assert {r["head"] for r in records} == {head}
        assert len(records) == 2 * 2  # 2 test pieces x (vocals, accompaniment)
        for target in ("vocals", "accompaniment"):
            logged = result["test_metrics"][f"test/{target}/SDRi"]
            assert row["measured"][f"{target}/SDRi"] == pytest.approx(logged, abs=1e-4)
            assert math.isfinite(logged)
        assert row["measured"]["Parameters"] > 0
    assert rows["DC"]["measured"]["Parameters"] < rows["MI"]["measured"]["Parameters"]
    md = (results / "ci" / "table-chimera-2.md").read_text()
    assert "| unavailable | 6.10 |" in md and "public iKala data set not available" in md
    assert "DSD100-remix protocol on MUSDB18's train/test split" in md
    three = json.loads((results / "ci" / "table-chimera-3.json").read_text())["rows"]
    assert three[0]["run"] == rows["CHI_0.1-MI"]["run"]  # trained once for both tables
    one = (results / "ci" / "table-chimera-1.md").read_text()
    assert "not run (another team's MIREX system" in one and "6.3 11.2 7.3 14.5" in one
    assert "| DC | not run | ? |" in one


@pytest.mark.slow
def test_table_4s_features_end_to_end(tmp_path, monkeypatch, isolated_cache) -> None:
    """``make table-chimera-4`` at the ci profile (a small BLSTM): four front ends, 16 and
    22.05 kHz, 1024 / 256 and 2048 / 512, 150 to 300 Mel bins without deltas."""
    _small_tables(tmp_path, monkeypatch)
    args = ["table", "chimera-4", "--profile", "ci", "--runs-dir", str(tmp_path / "runs")]
    assert sweeps_main([*args, "--results-dir", str(tmp_path / "results")]) == 0
    rows = json.loads((tmp_path / "results" / "ci" / "table-chimera-4.json").read_text())["rows"]
    assert [row["status"] for row in rows] == ["current"] * 4
    for row in rows:
        config = yaml.safe_load((tmp_path / "runs" / row["run"] / "config.yaml").read_text())
        bins = config["model"]["init_args"]["mel_bins"]
        assert row["label"].endswith(f"mel{bins}")
        assert all(math.isfinite(row["measured"][f"{t}/SDRi"]) for t in ("vocals", "accompaniment"))
