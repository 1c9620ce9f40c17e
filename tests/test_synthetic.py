"""Tests of the synthetic MUSDB18-layout data set (datamodules/synthetic.py)."""

from __future__ import annotations

import json
from pathlib import Path

import musdb
import numpy as np
import pytest
import soundfile as sf

from datamodules import synthetic
from datamodules.synthetic import (
    MANIFEST_NAME,
    SOURCES,
    generate_track,
    track_names,
    write_synthetic_musdb,
)

FILES = ("mixture", *SOURCES)
SMALL = {"n_train": 3, "n_test": 2, "duration": 3.0, "seed": 0}


def _wav_files(root: Path) -> list[Path]:
    return sorted(p for split in ("train", "test") for p in (root / split).rglob("*.wav"))


def _mtimes(root: Path) -> dict[Path, int]:
    paths = [*_wav_files(root), root / MANIFEST_NAME]
    return {p: p.stat().st_mtime_ns for p in paths}


def _longest_silence(audio: np.ndarray) -> int:
    """Longest run of samples that are exactly zero in every channel."""
    silent = np.all(audio == 0, axis=1).astype(np.int8)
    edges = np.diff(np.concatenate([[0], silent, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if len(starts) else 0


def _low_share(x: np.ndarray, cutoff: float = 120.0) -> float:
    """Share of the signal's energy below ``cutoff`` Hz."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 44100)
    return float(power[freqs < cutoff].sum() / power.sum())


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_musdb(tmp_path_factory.mktemp("syn") / "musdb", **SMALL, progress=False)


def test_layout_loads_through_musdb(small_root: Path) -> None:
    names = track_names(3, 2, 0)
    train = musdb.DB(root=str(small_root), is_wav=True, subsets="train")
    test = musdb.DB(root=str(small_root), is_wav=True, subsets="test")
    assert [t.name for t in train] == names["train"]
    assert [t.name for t in test] == names["test"]
    assert not set(names["train"]) & set(names["test"])
    for track in [*train, *test]:
        assert track.rate == 44100
        assert track.samples == int(3.0 * 44100)
        assert set(track.sources) == {"vocals", "drums", "bass", "other"}
    for track in (train[0], test[0]):  # decoding runs ffmpeg per file: two tracks suffice
        mixture = track.audio
        assert mixture.shape == (int(3.0 * 44100), 2)
        stems = {name: src.audio for name, src in track.sources.items()}
        # musdb decodes through ffmpeg to s16le; the PCM files make the sum exact there too.
        np.testing.assert_array_equal(mixture, sum(stems.values()))
        assert np.abs(stems["vocals"]).max() > 0.01


def test_files_are_stereo_pcm_and_mixture_is_exact_sum(small_root: Path) -> None:
    folders = [p for split in ("train", "test") for p in sorted((small_root / split).iterdir())]
    assert len(folders) == 5
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{f}.wav" for f in FILES)
        audio = {}
        for name in FILES:
            info = sf.info(folder / f"{name}.wav")
            assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_16")
            audio[name], _ = sf.read(folder / f"{name}.wav", dtype="float64")
        np.testing.assert_array_equal(audio["mixture"], sum(audio[s] for s in SOURCES))
        assert 0.05 < np.max(np.abs(audio["mixture"])) <= 0.9


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = write_synthetic_musdb(tmp_path / "a", n_train=2, n_test=1, duration=2.0, progress=False)
    b = write_synthetic_musdb(tmp_path / "b", n_train=2, n_test=1, duration=2.0, progress=False)
    files_a, files_b = _wav_files(a), _wav_files(b)
    assert [p.relative_to(a) for p in files_a] == [p.relative_to(b) for p in files_b]
    for fa, fb in zip(files_a, files_b, strict=True):
        assert fa.read_bytes() == fb.read_bytes(), fa
    # A track does not depend on how many other tracks are generated.
    c = write_synthetic_musdb(tmp_path / "c", n_train=1, n_test=1, duration=2.0, progress=False)
    for rel in ("train/Synthetic 000 - Seed 0", "test/Synthetic Test 000 - Seed 0"):
        for name in FILES:
            assert (a / rel / f"{name}.wav").read_bytes() == (c / rel / f"{name}.wav").read_bytes()
    # Another seed gives other audio (and other names).
    d = write_synthetic_musdb(
        tmp_path / "d", n_train=2, n_test=1, duration=2.0, seed=1, progress=False
    )
    x, _ = sf.read(a / "train/Synthetic 000 - Seed 0/vocals.wav")
    y, _ = sf.read(d / "train/Synthetic 000 - Seed 1/vocals.wav")
    assert x.shape == y.shape and not np.array_equal(x, y)
    # Tracks within one data set differ from each other.
    t0 = generate_track(0, 0, duration=2.0)
    t1 = generate_track(0, 1, duration=2.0)
    assert not np.array_equal(t0["mixture"], t1["mixture"])


@pytest.mark.parametrize("duration", [1.3, 2.0, 3.5, 8.0])
def test_vocals_have_a_silent_second_and_all_stems_are_active(duration: float) -> None:
    for seed in range(4):
        for split_index, track_index in ((0, 0), (0, 1), (1, 0)):
            track = generate_track(split_index, track_index, duration=duration, seed=seed)
            assert track["mixture"].dtype == np.int16
            assert track["mixture"].shape == (int(round(duration * 44100)), 2)
            vocals = track["vocals"]
            assert _longest_silence(vocals) >= 44100, (seed, split_index, track_index)
            assert np.sqrt(np.mean(vocals.astype(float) ** 2)) > 100  # > -50 dBFS overall
            for name in ("drums", "bass", "other"):
                audio = track[name].astype(float)
                assert np.sqrt(np.mean(audio**2)) > 100, name
                assert np.mean(np.all(track[name] == 0, axis=1)) < 0.5, name
            # Both channels carry signal, with small level differences.
            left, right = np.abs(vocals.astype(float)).sum(axis=0)
            assert 0.5 < left / right < 2.0


def test_vocals_separable_from_accompaniment() -> None:
    for track_index in range(4):
        track = generate_track(0, track_index, duration=6.0, seed=3)
        vocals = track["vocals"].astype(float).mean(axis=1)
        acc = sum(track[s].astype(float) for s in ("drums", "bass", "other")).mean(axis=1)
        # Waveforms are nearly uncorrelated.
        assert abs(np.corrcoef(vocals, acc)[0, 1]) < 0.2
        # Spectrally: the voice (f0 >= ~150 Hz) has no energy in the kick/bass region.
        assert _low_share(vocals) < 0.01
        assert _low_share(acc) > 0.1
        # Temporally: the accompaniment keeps playing while the voice rests.
        frame = 2205
        n = len(vocals) // frame * frame
        env_v = np.sqrt((vocals[:n].reshape(-1, frame) ** 2).mean(axis=1))
        env_a = np.sqrt((acc[:n].reshape(-1, frame) ** 2).mean(axis=1))
        rests = env_v == 0
        assert rests.sum() >= 20  # >= 1 s of silent 50 ms frames
        assert env_a[rests].mean() > 0.5 * env_a.mean()
        assert abs(np.corrcoef(env_v, env_a)[0, 1]) < 0.5


def test_levels_are_comparable() -> None:
    for track_index in range(4):
        track = generate_track(1, track_index, duration=6.0, seed=5)
        vocals = track["vocals"].astype(float)
        acc = sum(track[s].astype(float) for s in ("drums", "bass", "other"))
        ratio_db = 10 * np.log10(np.mean(vocals**2) / np.mean(acc**2))
        assert -6.0 < ratio_db < 6.0


def test_second_call_is_a_no_op(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _mtimes(small_root)
    listing = sorted(p.relative_to(small_root) for p in small_root.rglob("*"))

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing should be generated on a complete tree")

    monkeypatch.setattr(synthetic, "generate_track", fail)
    assert write_synthetic_musdb(small_root, **SMALL, progress=False) == small_root
    assert _mtimes(small_root) == before
    assert sorted(p.relative_to(small_root) for p in small_root.rglob("*")) == listing
    manifest = json.loads((small_root / MANIFEST_NAME).read_text())
    assert manifest["complete"] is True
    assert manifest["args"] == {**SMALL, "rate": 44100}
    assert manifest["tracks"] == track_names(3, 2, 0)


def test_manifest_mismatch_raises(small_root: Path) -> None:
    before = _mtimes(small_root)
    with pytest.raises(ValueError, match="seed") as err:
        write_synthetic_musdb(small_root, **{**SMALL, "seed": 1}, progress=False)
    assert str(small_root) in str(err.value)
    with pytest.raises(ValueError, match="duration"):
        write_synthetic_musdb(small_root, **{**SMALL, "duration": 4.0}, progress=False)
    with pytest.raises(ValueError, match="n_train"):
        write_synthetic_musdb(small_root, **{**SMALL, "n_train": 4}, progress=False)
    assert _mtimes(small_root) == before


def test_refuses_foreign_root(tmp_path: Path) -> None:
    (tmp_path / "train" / "Some Artist - Some Song").mkdir(parents=True)
    with pytest.raises(ValueError, match=str(tmp_path)):
        write_synthetic_musdb(tmp_path, n_train=1, n_test=1, duration=2.0, progress=False)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_refuses_extra_track_folders(tmp_path: Path) -> None:
    root = write_synthetic_musdb(tmp_path / "r", n_train=1, n_test=1, duration=2.0, progress=False)
    (root / "train" / "Real Artist - Real Song").mkdir()
    with pytest.raises(ValueError, match="Real Artist"):
        write_synthetic_musdb(root, n_train=1, n_test=1, duration=2.0, progress=False)


def test_recovers_from_killed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = {"n_train": 3, "n_test": 1, "duration": 2.0, "seed": 7, "progress": False}
    reference = write_synthetic_musdb(tmp_path / "reference", **args)
    root = tmp_path / "root"
    real_write = synthetic.sf.write
    calls = {"n": 0}

    def dying_write(*a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] == 8:  # in the middle of the second track
            raise KeyboardInterrupt
        real_write(*a, **k)

    monkeypatch.setattr(synthetic.sf, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_musdb(root, **args)
    monkeypatch.setattr(synthetic.sf, "write", real_write)

    # The half-written track sits in the temp folder, outside the musdb tree.
    assert (root / synthetic._TMP_DIR).is_dir()
    assert not json.loads((root / MANIFEST_NAME).read_text())["complete"]
    db = musdb.DB(root=str(root), is_wav=True, subsets="train")
    assert [t.name for t in db] == ["Synthetic 000 - Seed 7"]
    done = (root / "train" / "Synthetic 000 - Seed 7" / "vocals.wav").stat().st_mtime_ns

    write_synthetic_musdb(root, **args)
    assert not (root / synthetic._TMP_DIR).exists()
    assert json.loads((root / MANIFEST_NAME).read_text())["complete"]
    assert (root / "train" / "Synthetic 000 - Seed 7" / "vocals.wav").stat().st_mtime_ns == done
    files, ref_files = _wav_files(root), _wav_files(reference)
    assert [p.relative_to(root) for p in files] == [p.relative_to(reference) for p in ref_files]
    for f, g in zip(files, ref_files, strict=True):
        assert f.read_bytes() == g.read_bytes(), f


def test_manifest_write_killed_midway_is_ignored_and_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest goes through datamodules.files.write_atomic: a kill between writing and
    renaming leaves only a hidden temp file, which neither counts as a manifest nor makes the
    root look foreign."""
    import datamodules.files as files

    args = {"n_train": 1, "n_test": 1, "duration": 2.0, "progress": False}
    root = tmp_path / "r"

    def killed(source: object, target: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_musdb(root, **args)
    monkeypatch.undo()
    assert not (root / MANIFEST_NAME).exists()
    assert [p.name for p in root.iterdir() if p.name != synthetic._LOCK_NAME] == []

    (root / f".synthetic.{'x' * 8}.tmp.json").write_text('{"format": "half')  # kill -9 leftover
    write_synthetic_musdb(root, **args)
    assert json.loads((root / MANIFEST_NAME).read_text())["complete"] is True
    assert len(musdb.DB(root=str(root), is_wav=True, subsets="train")) == 1


def test_stale_temp_folder_and_missing_track_are_repaired(tmp_path: Path) -> None:
    args = {"n_train": 2, "n_test": 1, "duration": 2.0, "progress": False}
    root = write_synthetic_musdb(tmp_path / "r", **args)
    track = root / "train" / "Synthetic 001 - Seed 0"
    original = (track / "mixture.wav").read_bytes()
    untouched = (root / "train" / "Synthetic 000 - Seed 0" / "bass.wav").stat().st_mtime_ns
    (track / "other.wav").unlink()  # incomplete track folder
    stale = root / synthetic._TMP_DIR / "train" / "Synthetic 001 - Seed 0"
    stale.mkdir(parents=True)
    (stale / "mixture.wav").write_bytes(b"garbage")

    write_synthetic_musdb(root, **args)
    assert not (root / synthetic._TMP_DIR).exists()
    assert (track / "mixture.wav").read_bytes() == original
    assert (track / "other.wav").is_file()
    assert (root / "train" / "Synthetic 000 - Seed 0" / "bass.wav").stat().st_mtime_ns == untouched
    assert len(musdb.DB(root=str(root), is_wav=True, subsets="train")) == 2


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duration"):
        write_synthetic_musdb(tmp_path / "a", duration=0.5, progress=False)
    with pytest.raises(ValueError):
        write_synthetic_musdb(tmp_path / "b", n_train=-1, progress=False)
    with pytest.raises(TypeError):
        write_synthetic_musdb(tmp_path / "c", n_train=2.5, progress=False)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_cli_and_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cli"
    argv = [str(root), "--n-train", "1", "--n-test", "1", "--duration", "1.5", "--seed", "4"]
    synthetic.main(argv)
    out = capsys.readouterr()
    assert "ready" in out.out
    assert "track" in out.err  # tqdm bar
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["args"] == {
        "n_train": 1,
        "n_test": 1,
        "duration": 1.5,
        "rate": 44100,
        "seed": 4,
    }
    assert (root / "test" / "Synthetic Test 000 - Seed 4" / "mixture.wav").is_file()
    with pytest.raises(SystemExit):  # mismatching arguments: clear error, exit code 2
        synthetic.main([*argv[:-1], "5"])
    assert str(root) in capsys.readouterr().err


def test_bss_eval_is_well_conditioned_on_synthetic_audio() -> None:
    """Purely harmonic sources leave empty spectral valleys that make museval's 512-tap
    projections ill-conditioned (ISR/SAR garbage while SDR looks fine). With the broadband
    "air" of the generator, an oracle Wiener mask at 32 kHz gives consistent BSS Eval numbers:
    SDR below both SIR and SAR, as the decomposition requires."""
    import librosa
    import museval
    import torch

    track = generate_track(0, 0, 8.0, 44100, 0)
    mono = {k: v.astype(np.float32).mean(axis=1) / 32768 for k, v in track.items()}
    vocals = mono["vocals"]
    accompaniment = mono["drums"] + mono["bass"] + mono["other"]
    resampled = [
        librosa.resample(x, orig_sr=44100, target_sr=32000, res_type="polyphase")
        for x in (vocals, accompaniment)
    ]
    window = torch.hann_window(2048, dtype=torch.float64)
    spectra = [
        torch.stft(torch.from_numpy(x).double(), 2048, 512, window=window, return_complex=True)
        for x in resampled
    ]
    power = [s.abs() ** 2 for s in spectra]
    mask = power[0] / (power[0] + power[1] + 1e-12)
    estimate = torch.istft(
        mask * (spectra[0] + spectra[1]), 2048, 512, window=window, length=len(resampled[0])
    ).numpy()
    references = np.stack(resampled)[..., None]
    estimates = np.stack([estimate, resampled[0] + resampled[1] - estimate])[..., None]
    sdr, isr, sir, sar = (
        np.nanmedian(m[0]) for m in museval.evaluate(references, estimates, win=32000, hop=32000)
    )
    assert sdr > 10
    assert sir > sdr and sar > sdr - 1.0, (sdr, sir, sar)
    assert isr > sdr, (sdr, isr)
