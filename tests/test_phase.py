"""MagNet + PhaseNet (thesis 4.5, issue #12, spec thesis-multiband-phase.md sections 2.4 and 5):
phase features, the codebooks, the oracle phase-class reconstruction against the closed-form
quantisation error, the losses at known values, stage freezing, the counts of every network
(the PhaseNet's by hand), the plan of Table 4.11 (shared stages) and 4.14, and Table 4.11 end
to end at the ci profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datamodules.conventions import STFTConfig, chunk_samples
from lightning_modules.dsp.phase import (
    interpolate_phasor,
    kept_samples,
    nearest_codebook_class,
    overlap_add,
    phase_codebook,
    phase_features,
    wrap_phase,
)
from lightning_modules.dsp.spectral import ideal_amplitude_mask, istft, stft
from lightning_modules.inference.stats import count_call_macs, count_parameters, network_stats
from lightning_modules.nets import BandConfig, MMDenseNet
from lightning_modules.nets.phasenet import LOG_EPS, CodebookMask, MagPhaseNet, PhaseNet
from lightning_modules.separators.phase import MagPhaseSeparator
from lightning_modules.separators.phase_losses import (
    complex_mse,
    l1_loss,
    phasor_mse,
    weighted_sdr_loss,
)
from lightning_modules.separators.spectrogram import LOG_EPS as SUITE_LOG_EPS
from sweeps.__main__ import main as sweeps_main
from sweeps.plan import plan_table
from sweeps.specs import load_table

N, HOP = 2048, 512
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments/mmdensenet/magnet_phasenet.yaml"


def _snr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    wide = torch.complex128 if reference.is_complex() else torch.float64
    reference, estimate = reference.to(wide), estimate.to(wide)
    return float(
        10
        * torch.log10(reference.abs().square().sum() / (reference - estimate).abs().square().sum())
    )


def _tones(length: int, seed: int = 0, rate: int = 32000) -> torch.Tensor:
    """A sum of 12 random sinusoids between 200 Hz and 8 kHz: no content near DC."""
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(length, dtype=torch.float64)
    freqs = 200 + 7800 * torch.rand(12, generator=g, dtype=torch.float64)
    phases = 2 * math.pi * torch.rand(12, generator=g, dtype=torch.float64)
    return (
        (0.05 * torch.cos(2 * math.pi * freqs[:, None] * n / rate + phases[:, None])).sum(0).float()
    )


# --- phase features ------------------------------------------------------------------------


def test_phase_features_ignore_a_constant_phase_rotation_and_lie_in_minus_one_one() -> None:
    g = torch.Generator().manual_seed(0)
    spectrum = torch.complex(
        torch.randn(2, 1024, 16, generator=g), torch.randn(2, 1024, 16, generator=g)
    )
    features = phase_features(spectrum)
    rotated = phase_features(spectrum * torch.exp(torch.tensor(1j * 1.234)))
    assert features.shape == (2, 2, 1024, 16)
    assert float(features.min()) >= -1 and float(features.max()) < 1
    # compared on the circle: a value at the wrap (-1) may come back as +1 - tiny
    gap = (torch.exp(1j * math.pi * features) - torch.exp(1j * math.pi * rotated)).abs()
    assert float(gap.max()) < 1e-4


def test_a_sinusoid_at_a_bin_has_zero_instantaneous_frequency() -> None:
    k0 = 37  # FFT bin k0 is spectrogram index k0 - 1 (DC dropped)
    n = torch.arange(chunk_samples(16), dtype=torch.float64)
    x = torch.cos(2 * math.pi * k0 * n / N + 0.3)
    features = phase_features(stft(x))
    assert features[0, k0 - 1, 1:-1].abs().max() < 1e-6
    # without the hop's compensation the raw phase advance over 2 hops is 4 pi k0 hop / N
    raw = wrap_phase(torch.tensor(4 * math.pi * k0 * HOP / N)) / math.pi
    assert abs(float(raw)) > 0.1


def test_an_impulse_at_a_frames_centre_has_zero_group_delay_in_that_frame() -> None:
    t = 5
    x = torch.zeros(chunk_samples(12), dtype=torch.float64)
    x[t * HOP + N // 2] = 1.0
    features = phase_features(stft(x))
    assert features[1, 1:-1, t].abs().max() < 1e-6


# --- codebooks -----------------------------------------------------------------------------


def test_the_phase_codebook_and_its_interpolation() -> None:
    codebook = phase_codebook(8, dtype=torch.float64)
    expected = [-math.pi + 2 * math.pi * i / 8 for i in range(8)]
    assert codebook.tolist() == pytest.approx(expected, abs=1e-15)
    assert float(codebook[4]) == 0.0  # the class that keeps the mixture phase
    one_hot = torch.eye(8, dtype=torch.float64)[:, :, None, None]  # (8 cases, 8 classes, 1, 1)
    phasors = interpolate_phasor(one_hot, codebook, dim=1)[:, 0, 0]
    assert torch.allclose(phasors, torch.exp(1j * codebook.to(torch.complex128)), atol=1e-12)
    uniform = torch.full((1, 8, 2, 2), 1 / 8, requires_grad=True)
    phasor = interpolate_phasor(uniform, phase_codebook(8))
    phasor.abs().sum().backward()
    assert torch.isfinite(torch.view_as_real(phasor)).all() and torch.isfinite(uniform.grad).all()
    # two neighbours at equal weight: the phase half-way between them
    half = torch.zeros(1, 8, 1, 1, dtype=torch.float64)
    half[0, 4], half[0, 5] = 0.5, 0.5
    angle = interpolate_phasor(half, codebook).angle()
    assert float(angle) == pytest.approx(math.pi / 8, abs=1e-12)


def test_the_nearest_class_is_the_nearest_on_the_circle() -> None:
    phases = torch.linspace(-7, 7, 2001, dtype=torch.float64)
    codebook = phase_codebook(8, dtype=torch.float64)
    distance = (torch.exp(1j * phases[:, None]) - torch.exp(1j * codebook[None])).abs()
    assert torch.equal(nearest_codebook_class(phases, 8), distance.argmin(dim=1))


def test_the_mask_codebook_gives_its_values_for_one_hot_probabilities() -> None:
    mask = CodebookMask((0.0, 1.0, 2.0))
    one_hot = torch.eye(3)[:, :, None, None]
    assert mask.interpolate(one_hot).flatten().tolist() == [0.0, 1.0, 2.0]
    assert float(mask(torch.zeros(1, 3, 1, 1))) == pytest.approx(1.0)  # uniform: the mean


# --- oracle reconstructions ----------------------------------------------------------------


def test_the_oracle_phase_class_reaches_the_quantisation_snr() -> None:
    """With the offset angle S - angle X uniform within its class (white noise), the error of a
    unit phasor quantised to a cell of width 2 pi / 8 is E|e^{iu} - 1|^2 = 2 - 2 E cos u over u
    uniform in [-pi/8, pi/8], i.e. 2 - 2 sin(pi/8) / (pi/8): 12.92 dB."""
    half = math.pi / 8
    closed_form = -10 * math.log10(2 - 2 * math.sin(half) / half)
    u = np.linspace(-half, half, 200001)
    numeric = -10 * math.log10(float(np.mean(2 - 2 * np.cos(u))))
    assert closed_form == pytest.approx(12.92, abs=0.005) and numeric == pytest.approx(
        closed_form, abs=1e-3
    )

    g = torch.Generator().manual_seed(0)
    length = 32000 * 6
    vocals, accompaniment = torch.randn(2, length, generator=g) * 0.1
    mixture = vocals + accompaniment
    X, S = stft(mixture, center=True), stft(vocals, center=True)
    codebook = phase_codebook(8)
    classes = nearest_codebook_class(S.angle() - X.angle(), 8)
    estimate = S.abs() * torch.exp(1j * (X.angle() + codebook[classes]))
    tf_snr = _snr(S, estimate)
    assert tf_snr == pytest.approx(closed_form, abs=0.3)
    time_snr = _snr(vocals, istft(estimate, length))
    assert time_snr >= tf_snr - 0.1  # the iSTFT projects onto consistent spectrograms


def test_offset_class_zero_is_the_mixture_phase_bit_for_bit(tiny_separator) -> None:
    model = tiny_separator("total")
    g = torch.Generator().manual_seed(1)
    mixture = torch.complex(
        torch.randn(2, 128, 8, generator=g), torch.randn(2, 128, 8, generator=g)
    )
    mask = torch.rand(2, 128, 8, generator=g) * 2
    zero = torch.zeros(2, 8, 128, 8)
    zero[:, 4] = 1.0
    offset = interpolate_phasor(zero, model.codebook)
    with_offset = model.estimate({"mask": mask, "offset": offset}, mixture)
    mixture_phase = model.estimate({"mask": mask}, mixture)
    assert torch.equal(with_offset, mixture_phase)
    assert torch.equal(mixture_phase, mask * mixture.abs() * torch.exp(1j * mixture.angle()))


def test_the_unclipped_iam_with_the_true_phase_reconstructs_the_source() -> None:
    length = 32000 * 2
    vocals, accompaniment = _tones(length, 0), _tones(length, 1)
    X, S = stft(vocals + accompaniment, center=True), stft(vocals, center=True)
    estimate = ideal_amplitude_mask(S, X) * X.abs() * torch.exp(1j * S.angle())
    assert _snr(vocals, istft(estimate, length)) > 80


# --- losses --------------------------------------------------------------------------------


def test_losses_at_their_known_values() -> None:
    frames = 16
    kept = kept_samples(frames)
    assert kept.stop - kept.start == (frames - 1) * HOP + N - 2 * (N - HOP)
    assert kept_samples(64).stop - kept_samples(64).start == 31232  # the spec's 64-frame chunk
    chunk = _tones(chunk_samples(frames), 3)
    inverse = overlap_add(stft(chunk))
    assert torch.allclose(inverse, chunk[kept], atol=1e-5)

    s, x = overlap_add(stft(_tones(chunk_samples(frames), 4))), inverse
    x = x + s  # a mixture of the two
    S = stft(_tones(chunk_samples(frames), 4))
    assert float(complex_mse(S, S)) == 0.0 and float(l1_loss(s, s)) == 0.0
    assert float(phasor_mse(torch.exp(1j * S.angle()), S)) == pytest.approx(0.0, abs=1e-10)
    assert float(weighted_sdr_loss(x, s, s)) == pytest.approx(-1.0, abs=1e-6)
    # s_hat = x: the accompaniment term vanishes (x - s_hat = 0), finite
    beta = float(s.square().sum() / (s.square().sum() + (x - s).square().sum()))
    cos = float((s * x).sum() / (s.norm() * x.norm()))
    assert float(weighted_sdr_loss(x, s, x)) == pytest.approx(-beta * cos, abs=1e-6)
    # by hand: s = (1, 0, 0), x - s = (0, 2, 0), s_hat = (0, 0, 1): beta = 1/5, cos(s, s_hat) = 0,
    # cos(x - s, x - s_hat) = <(0, 2, 0), (1, 2, -1)> / (2 sqrt 6) = 2 / sqrt 6
    hand = weighted_sdr_loss(
        torch.tensor([[1.0, 2.0, 0.0]]),
        torch.tensor([[1.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 0.0, 1.0]]),
    )
    assert float(hand) == pytest.approx(-0.8 * 2 / math.sqrt(6), abs=1e-6)
    noisy = torch.randn(8, 1000, generator=torch.Generator().manual_seed(0))
    values = [weighted_sdr_loss(noisy[i], noisy[i + 1], noisy[i + 2]) for i in range(6)]
    assert all(-1 <= float(v) <= 1 for v in values)


# --- the module: stages --------------------------------------------------------------------

SMALL_STFT = {"n_fft": 256, "hop": 64}


@pytest.fixture
def tiny_separator():
    def build(loss: str, magnitude_to_phase: bool = True) -> MagPhaseSeparator:
        torch.manual_seed(0)
        net = MagPhaseNet(
            MMDenseNet(  # a small full-band MagNet: the stages, not its size, are tested
                out_channels=3,
                output_activation="none",
                low=None,
                high=None,
                full=BandConfig((4,) * 7, (1,) * 7),
            ),
            PhaseNet(),
            estimate_phase=loss != "iam",
            magnitude_to_phase=magnitude_to_phase,
        )
        return MagPhaseSeparator(
            net, loss=loss, context_frames=8, eval_workers=0, stft=STFTConfig(**SMALL_STFT)
        )

    return build


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    length = chunk_samples(8, SMALL_STFT["n_fft"], SMALL_STFT["hop"])
    vocals, accompaniment = torch.randn(2, 2, 1, length, generator=g) * 0.1
    return {"mixture": vocals + accompaniment, "targets": torch.stack([vocals, accompaniment], 1)}


def _step(model: MagPhaseSeparator) -> dict[str, dict[str, torch.Tensor]]:
    """One optimiser step of the stage; the state of each network before it."""
    before = {
        name: {k: v.clone() for k, v in getattr(model.net, name).state_dict().items()}
        for name in ("magnet", "phasenet")
    }
    optimizer = model.configure_optimizers()["optimizer"]
    model.train()
    loss = model.training_loss(_batch())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    return before


def _changed(model: MagPhaseSeparator, before: dict, name: str) -> tuple[bool, bool]:
    """(weights changed, BatchNorm statistics changed) of one network."""
    after = getattr(model.net, name).state_dict()
    stats = [k for k in after if "running_" in k]
    weights = [k for k in after if k not in stats and "num_batches" not in k]
    return (
        any(not torch.equal(after[k], before[name][k]) for k in weights),
        any(not torch.equal(after[k], before[name][k]) for k in stats),
    )


@pytest.mark.parametrize(
    ("loss", "magnitude_to_phase", "magnet", "phasenet"),
    [
        ("iam", True, (True, True), (False, False)),
        ("phase", False, (False, False), (True, True)),
        ("phase", True, (False, False), (True, True)),
        ("cmse", True, (True, True), (True, True)),
        ("total", True, (True, True), (True, True)),
    ],
)
def test_a_stage_trains_only_its_networks(
    tiny_separator, loss, magnitude_to_phase, magnet, phasenet
) -> None:
    model = tiny_separator(loss, magnitude_to_phase)
    before = _step(model)
    assert _changed(model, before, "magnet") == magnet
    assert _changed(model, before, "phasenet") == phasenet
    assert not model.net.magnet.training or magnet[0]  # a frozen MagNet stays in eval mode


def test_each_stages_checkpoint_loads_into_the_next_stage_strictly(tiny_separator) -> None:
    stages = [("iam", True), ("phase", False), ("phase", True), ("total", True)]
    modules = [tiny_separator(loss, m) for loss, m in stages]
    for previous, following in zip(modules, modules[1:], strict=False):
        following.load_state_dict(previous.state_dict(), strict=True)


def test_a_full_track_is_separated_in_blocks(tiny_separator) -> None:
    model = tiny_separator("total").eval()
    mixture = torch.randn(1, 3000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        estimates = model.separate(mixture)
    assert estimates.shape == (2, 1, 3000) and torch.isfinite(estimates).all()
    assert torch.allclose(estimates.sum(0), mixture, atol=1e-6)


def test_inconsistent_options_are_refused(tiny_separator) -> None:
    model = tiny_separator("total")
    with pytest.raises(ValueError, match="estimate_phase: False"):
        MagPhaseSeparator(model.net, loss="iam")
    with pytest.raises(ValueError, match="does not use model.init_args.mel_bins"):
        MagPhaseSeparator(model.net, loss="total", mel_bins=64)
    with pytest.raises(ValueError, match="loss must be one of"):
        MagPhaseSeparator(model.net, loss="sdr")


# --- counts --------------------------------------------------------------------------------


def _dense_block(c0: int, k: int, layers: int) -> int:
    """BatchNorm (2 per map) and bias-free 3x3 conv per layer."""
    return sum(2 * (c0 + i * k) + 9 * (c0 + i * k) * k for i in range(layers))


def test_the_phasenet_has_its_hand_counted_parameters() -> None:
    """Input conv 2 -> 16 (biased); blocks k = 4, L = 3 at resolutions 1, 1/2, 1/4 (encoder
    1, 1/2, bottleneck 1/4, decoder 1/2, 1 on [up, skip] = 8 maps); 1x1 down-sampling convs and
    2x2 transposed up-sampling convs on 4 maps; output block k = 4, L = 2 on 4 + 1 maps; 1x1
    biased output conv to 8 classes."""
    unet = (2 * 16 * 9 + 16) + _dense_block(16, 4, 3)  # input conv, encoder at 1
    unet += 2 * _dense_block(4, 4, 3) + 2 * _dense_block(8, 4, 3)  # 1/2, 1/4; decoder 1/2, 1
    unet += 2 * (4 * 4) + 2 * (4 * 4 * 2 * 2)  # two 1x1 down-sampling, two 2x2 up-sampling convs
    total = unet + _dense_block(5, 4, 2) + (4 * 8 + 8)
    assert total == 7876
    assert count_parameters(PhaseNet()) == total


@pytest.fixture(scope="module")
def smoke_plan(tmp_path_factory) -> dict:
    """Table 4.11 planned at the smoke profile (architectures are the full ones)."""
    runs = tmp_path_factory.mktemp("runs")
    return {p.row.label: p for p in plan_table(load_table("4.11"), "smoke", runs)}


def test_parameters_and_macs_of_every_row_are_pinned(smoke_plan) -> None:
    """At 64 frames: the baseline 268,929 / 3.838 G; the MagNet +10 parameters (3 output maps);
    MagNet + PhaseNet 276,815 / 4.160 G (the PhaseNet 7,876 / 0.322 G)."""
    counted = {label: network_stats(p.resolved, 64) for label, p in smoke_plan.items()}
    assert counted == {
        "Baseline": {"params": 268_929, "macs": 3_837_521_920},
        "MagNet, IAM": {"params": 268_939, "macs": 3_838_046_208},
        "L_tot, no bootstrapping": {"params": 276_815, "macs": 4_160_090_112},
        "L_cMSE, bootstrapped": {"params": 276_815, "macs": 4_160_090_112},
        "L_tot, bootstrapped": {"params": 276_815, "macs": 4_160_090_112},
    }
    phasenet = PhaseNet()
    macs = count_call_macs(phasenet, torch.zeros(1, 2, 1024, 64), torch.zeros(1, 1, 1024, 64))
    assert macs == 322_043_904 == 4_160_090_112 - 3_838_046_208
    assert LOG_EPS == SUITE_LOG_EPS


# --- plans ---------------------------------------------------------------------------------


def test_the_plan_shares_the_bootstrapping_stages(smoke_plan) -> None:
    plans = smoke_plan
    magnet = plans["MagNet, IAM"].stages
    cmse, total = plans["L_cMSE, bootstrapped"].stages, plans["L_tot, bootstrapped"].stages
    assert len(magnet) == 1 and len(cmse) == len(total) == 4
    assert cmse[0].run_dir == total[0].run_dir == magnet[0].run_dir
    assert [s.run_dir for s in cmse[1:3]] == [s.run_dir for s in total[1:3]]
    assert cmse[3].run_dir != total[3].run_dir
    for stages in (cmse, total):
        for previous, stage in zip(stages, stages[1:], strict=False):
            assert (
                stage.resolved["model"]["init_args"]["init_from"] == f"run:{previous.run_dir.name}"
            )
    losses = [s.resolved["model"]["init_args"]["loss"] for s in total]
    assert losses == ["iam", "phase", "phase", "total"]
    runs = {s.run_dir for p in plans.values() for s in p.stages}
    assert len(runs) == 7  # baseline, MagNet, no bootstrapping, stages 2 and 3, two stage-4s
    # the thesis's stage lengths (smoke: 3 % of the epochs, at least 1)
    epochs = [s.resolved["trainer"]["max_epochs"] for s in cmse + total[3:]]
    assert epochs == [3, 3, 3, 2, 1]


def _tables_keeping(tmp_path: Path, monkeypatch, rows: dict[str, list[str]]) -> None:
    """Copies of the named table specs that keep only the given rows (bases made absolute),
    in place of the suite's tables."""
    import sweeps.specs as specs

    repo, tables = specs.TABLES.parents[1], tmp_path / "tables"
    tables.mkdir()
    for table, labels in rows.items():
        raw = yaml.safe_load((specs.TABLES / f"table-{table}.yaml").read_text())
        raw["rows"] = [r for r in raw["rows"] if r["label"] in labels]
        assert [r["label"] for r in raw["rows"]] == labels
        for entry in (raw, *raw["rows"]):
            if entry.get("base"):
                entry["base"] = str(repo / entry["base"])
        (tables / f"table-{table}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setattr(specs, "TABLES", tables)


def test_table_4_14_takes_the_bootstrapped_l_tot_row_of_table_4_11(tmp_path, monkeypatch) -> None:
    """Table 4.14's row (planned from a copy that keeps only it: planning every summarised
    table takes minutes) names the 4.11 row's four stages."""
    label = "MagNet + PhaseNet, L_tot, bootstrapped"
    _tables_keeping(tmp_path, monkeypatch, {"4.14": [label], "4.11": ["L_tot, bootstrapped"]})
    (row,) = plan_table(load_table("4.14"), "ci", tmp_path)
    assert row.row.source == {"table": "4.11", "row": "L_tot, bootstrapped"}
    (phase,) = plan_table(load_table("4.11"), "ci", tmp_path)
    assert [s.run_dir for s in row.stages] == [s.run_dir for s in phase.stages]
    assert len(row.stages) == 4
    assert row.row.published == {"SDR": 5.49, "SIR": 12.93, "SAR": 5.47}


def test_the_experiment_is_the_no_bootstrapping_row() -> None:
    config = yaml.safe_load(EXPERIMENT.read_text())["model"]["init_args"]
    assert config["loss"] == "total" and config["net"]["init_args"]["estimate_phase"] is True


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_table_4_11_end_to_end(tmp_path, monkeypatch, isolated_cache) -> None:
    """``make table-4.11`` at the ci profile on its "MagNet, IAM" and "L_tot, bootstrapped"
    rows (the other rows are the baseline's run and the same stages on other losses): four
    runs, the MagNet's shared, every row current with finite scores and its counts."""
    _tables_keeping(tmp_path, monkeypatch, {"4.11": ["MagNet, IAM", "L_tot, bootstrapped"]})
    results, runs = tmp_path / "results", tmp_path / "runs"
    args = ["--profile", "ci", "--runs-dir", str(runs), "--results-dir", str(results)]
    assert sweeps_main(["table", "4.11", *args]) == 0
    rows = json.loads((results / "ci" / "table-4.11.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["current"] * 2
    assert all(math.isfinite(r["measured"]["SDR"]) for r in rows)
    assert [r["measured"]["Parameters"] for r in rows] == [268_939, 276_815]
    assert len([p for p in runs.iterdir() if (p / "result.json").exists()]) == 4
