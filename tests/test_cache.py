"""Tests of datamodules/cache.py: decode once into one array per split + a JSON index."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from types import SimpleNamespace

import musdb
import numpy as np
import pytest
import soundfile as sf

import datamodules.musdb_datamodule as dm_module
from datamodules.activity import WINDOW_SECONDS
from datamodules.cache import (
    SOURCES,
    SplitAudio,
    StemError,
    build_split,
    cache_key,
    decode_track,
    load_split,
    open_tracks,
)
from datamodules.files import atomic_path, write_atomic, write_json_atomic
from datamodules.musdb_datamodule import MUSDBDataModule

RATE = 8000


def _fake_decode(track, rate: int) -> np.ndarray:
    """Deterministic stand-in for decode_track: (4, length) noise, length from the name."""
    seed = zlib.crc32(track.name.encode())
    length = rate + seed % 997
    return np.random.default_rng(seed).standard_normal((len(SOURCES), length)).astype(np.float32)


def _tracks(*names: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=n) for n in names]


def _scratch_folders(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_dir()]


# -- build_split / load_split ---------------------------------------------------------------


def test_build_and_load_round_trip(tmp_path: Path) -> None:
    tracks = _tracks("Alpha - One", "Beta - Two", "Gamma - Three")
    built = build_split(tmp_path, "train", tracks, RATE, decode=_fake_decode)
    expected = [_fake_decode(t, RATE) for t in tracks]
    lengths = [a.shape[1] for a in expected]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.json", "train.npy"]
    index = json.loads((tmp_path / "train.json").read_text())
    assert index["rate"] == RATE
    assert index["sources"] == list(SOURCES)
    assert [t["name"] for t in index["tracks"]] == [t.name for t in tracks]
    assert [t["length"] for t in index["tracks"]] == lengths
    assert [t["offset"] for t in index["tracks"]] == [0, lengths[0], lengths[0] + lengths[1]]
    assert all(t["start"] == 0 for t in index["tracks"])

    loaded = load_split(tmp_path, "train", RATE)
    for split in (built, loaded):
        assert isinstance(split, SplitAudio)
        assert isinstance(split.audio, np.memmap)  # memory-mapped, not read into RAM
        assert split.audio.dtype == np.float32
        assert split.audio.shape == (len(SOURCES), sum(lengths))
        assert split.names == [t.name for t in tracks]
        np.testing.assert_array_equal(split.lengths, lengths)
        np.testing.assert_array_equal(split.offsets, [0, lengths[0], lengths[0] + lengths[1]])
        assert split.rate == RATE
        assert split.sources == SOURCES
        assert split.seconds == pytest.approx(sum(lengths) / RATE)
        for i, audio in enumerate(expected):
            np.testing.assert_array_equal(split.track(i), audio)
        np.testing.assert_array_equal(split.audio, np.concatenate(expected, axis=1))


def test_build_split_cuts_training_tracks_to_most_active_stretch(tmp_path: Path) -> None:
    def decode(track, rate):
        audio = np.zeros((len(SOURCES), 6 * rate), dtype=np.float32)
        audio[:, 3 * rate : 4 * rate] = 1.0 + np.arange(rate, dtype=np.float32) / rate
        return audio

    split = build_split(tmp_path, "train", _tracks("A", "B"), RATE, 1.0, decode=decode)
    np.testing.assert_array_equal(split.lengths, [RATE, RATE])
    np.testing.assert_array_equal(split.offsets, [0, RATE])
    starts = [t["start"] for t in json.loads((tmp_path / "train.json").read_text())["tracks"]]
    window = int(round(WINDOW_SECONDS * RATE))
    for i, start in enumerate(starts):
        assert abs(start - 3 * RATE) <= window
        np.testing.assert_array_equal(split.track(i), decode(None, RATE)[:, start : start + RATE])


def test_build_split_without_tracks_raises(tmp_path: Path) -> None:
    with pytest.raises(StemError, match="'valid' has no tracks"):
        build_split(tmp_path, "valid", [], RATE, decode=_fake_decode)


def test_load_split_of_missing_cache_is_none(tmp_path: Path) -> None:
    assert load_split(tmp_path, "train", RATE) is None
    assert load_split(tmp_path / "does-not-exist", "train", RATE) is None


def test_killed_build_is_not_taken_as_finished(tmp_path: Path) -> None:
    def dies_on_second_track(track, rate):
        if track.name == "B":
            raise KeyboardInterrupt  # a killed run
        return _fake_decode(track, rate)

    with pytest.raises(KeyboardInterrupt):
        build_split(tmp_path, "train", _tracks("A", "B"), RATE, decode=dies_on_second_track)
    assert not (tmp_path / "train.json").exists()
    assert load_split(tmp_path, "train", RATE) is None

    # A hard kill (no `finally`) leaves the scratch folder, maybe even the moved array.
    scratch = tmp_path / ".train-killed"
    scratch.mkdir()
    np.save(scratch / "0.npy", np.ones((4, 10), dtype=np.float32))
    np.save(tmp_path / "train.npy", np.ones((4, 10), dtype=np.float32))
    assert load_split(tmp_path, "train", RATE) is None

    split = build_split(tmp_path, "train", _tracks("A", "B"), RATE, decode=_fake_decode)
    reloaded = load_split(tmp_path, "train", RATE)
    assert reloaded is not None and reloaded.names == split.names == ["A", "B"]
    expected = np.concatenate([_fake_decode(t, RATE) for t in _tracks("A", "B")], axis=1)
    np.testing.assert_array_equal(reloaded.audio, expected)
    # the finished build cleaned up its own scratch folder (the stale one is harmless)
    assert [p.name for p in _scratch_folders(tmp_path)] == [".train-killed"]


def test_load_split_with_another_rate_raises(tmp_path: Path) -> None:
    build_split(tmp_path, "test", _tracks("A"), RATE, decode=_fake_decode)
    with pytest.raises(StemError, match=f"{RATE} Hz, expected 16000 Hz"):
        load_split(tmp_path, "test", 16000)


def test_load_split_with_inconsistent_array_raises(tmp_path: Path) -> None:
    build_split(tmp_path, "test", _tracks("A", "B"), RATE, decode=_fake_decode)
    np.save(tmp_path / "test.npy", np.zeros((4, 17), dtype=np.float32))
    with pytest.raises(StemError, match="does not match its index"):
        load_split(tmp_path, "test", RATE)


def test_cache_key_is_stable_and_sensitive() -> None:
    description = {"root": "/data", "rate": 32000, "splits": {"train": ["a", "b"]}}
    assert cache_key(description) == cache_key(dict(reversed(description.items())))
    assert len(cache_key(description)) == 16
    assert cache_key(description) != cache_key({**description, "rate": 16000})
    assert cache_key(description) != cache_key({**description, "splits": {"train": ["a"]}})


# -- decode_track on bad input (real musdb/stempeg path) -----------------------------------


def _wav_track(
    root: Path,
    rates: dict[str, int] | None = None,
    mixture_rate: int = 16000,
    corrupt: str | None = None,
    missing: str | None = None,
    seconds: float = 0.25,
):
    """A one-track MUSDB wav tree (train subset) and its musdb track."""
    folder = root / "train" / "Some Artist - Some Song"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("mixture", *SOURCES):
        rate = mixture_rate if name == "mixture" else (rates or {}).get(name, mixture_rate)
        if name == missing:
            continue
        if name == corrupt:
            (folder / f"{name}.wav").write_bytes(os.urandom(2000))
            continue
        audio = rng.uniform(-0.5, 0.5, (int(seconds * rate), 2)).astype(np.float32)
        sf.write(folder / f"{name}.wav", audio, rate, subtype="PCM_16")
    (track,) = musdb.DB(root=str(root), is_wav=True, subsets="train")
    return track


def test_corrupt_source_raises_naming_file_and_leaves_no_cache(tmp_path: Path) -> None:
    track = _wav_track(tmp_path / "musdb", corrupt="bass")
    directory = tmp_path / "cache"
    with pytest.raises(StemError, match=r"bass\.wav") as info:
        build_split(directory, "train", [track], 16000)  # the real decode path
    assert "Some Artist - Some Song" in str(info.value)
    assert "cannot decode bass" in str(info.value)
    assert not (directory / "train.json").exists()
    assert load_split(directory, "train", 16000) is None
    assert _scratch_folders(directory) == []


def test_missing_source_raises(tmp_path: Path) -> None:
    track = _wav_track(tmp_path / "musdb", missing="drums")
    with pytest.raises(StemError, match="drums") as info:
        decode_track(track, 16000)
    assert "Some Artist - Some Song" in str(info.value)


def test_missing_source_error_names_the_file(tmp_path: Path) -> None:
    track = _wav_track(tmp_path / "musdb", missing="drums")
    with pytest.raises(StemError, match=r"drums\.wav"):
        decode_track(track, 16000)


def test_source_at_other_rate_raises_naming_file(tmp_path: Path) -> None:
    track = _wav_track(tmp_path / "musdb", rates={"bass": 8000})
    with pytest.raises(StemError, match=r"bass\.wav at 8000 Hz") as info:
        decode_track(track, 16000)
    assert "16000 Hz" in str(info.value)


def test_odd_rate_in_first_source_names_that_file(tmp_path: Path) -> None:
    track = _wav_track(tmp_path / "musdb", rates={"vocals": 8000})
    with pytest.raises(StemError, match=r"vocals\.wav"):
        decode_track(track, 16000)


def test_sources_at_other_rate_than_mixture(tmp_path: Path) -> None:
    """musdb decodes every source at the mixture's rate; such a track would silently come out
    time-stretched, so it is refused, naming the files."""
    track = _wav_track(tmp_path / "musdb", rates=dict.fromkeys(SOURCES, 8000), mixture_rate=16000)
    with pytest.raises(StemError, match=r"vocals\.wav at 8000 Hz.*mixture.*16000 Hz"):
        decode_track(track, 16000)


# -- stereo (issue #11) -----------------------------------------------------------------------


def _fake_stereo(track, rate: int, channels: int = 2) -> np.ndarray:
    """(4, 2, length): the mono stand-in on the left, its negative halved on the right."""
    mono = _fake_decode(track, rate)
    return np.stack([mono, -0.5 * mono], axis=1)


def test_stereo_split_round_trip_and_a_mono_cache_never_serves_it(tmp_path: Path) -> None:
    tracks = _tracks("Alpha - One", "Beta - Two")
    built = build_split(tmp_path / "st", "train", tracks, RATE, decode=_fake_stereo, channels=2)
    lengths = [_fake_decode(t, RATE).shape[1] for t in tracks]
    assert built.audio.shape == (len(SOURCES), 2, sum(lengths))
    assert built.channels == 2
    loaded = load_split(tmp_path / "st", "train", RATE, channels=2)
    np.testing.assert_array_equal(loaded.track(1), _fake_stereo(tracks[1], RATE))
    assert loaded.sources_of(0).shape == (len(SOURCES), 2, lengths[0])
    index = json.loads((tmp_path / "st" / "train.json").read_text())
    assert index["channels"] == 2
    with pytest.raises(StemError, match="holds 2 channel.*expected 1"):
        load_split(tmp_path / "st", "train", RATE)
    mono = build_split(tmp_path / "mono", "train", tracks, RATE, decode=_fake_decode)
    assert "channels" not in json.loads((tmp_path / "mono" / "train.json").read_text())
    assert mono.channels == 1 and mono.sources_of(0).shape == (len(SOURCES), 1, lengths[0])
    with pytest.raises(StemError, match="holds 1 channel.*expected 2"):
        load_split(tmp_path / "mono", "train", RATE, channels=2)


def test_stereo_decoding_keeps_both_channels_of_the_stems(tmp_path: Path) -> None:
    track = _wav_track(tmp_path / "musdb", seconds=0.5)
    stereo = decode_track(track, 16000, channels=2)
    mono = decode_track(track, 16000)
    assert stereo.shape == (len(SOURCES), 2, mono.shape[-1])
    np.testing.assert_allclose(stereo.mean(axis=1), mono, atol=1e-6)
    assert np.abs(stereo[:, 0] - stereo[:, 1]).max() > 0.1  # two different channels


def test_datamodule_caches_mono_and_stereo_apart(synthetic_dm_kwargs: dict, tmp_path) -> None:
    kwargs = {**synthetic_dm_kwargs, "cache_dir": str(tmp_path)}
    mono, stereo = MUSDBDataModule(**kwargs), MUSDBDataModule(**kwargs, channels=2)
    mono.prepare_data()
    stereo.prepare_data()
    assert len(list((tmp_path / "decoded").iterdir())) == 2  # one cache folder each
    for name, split in stereo.splits.items():
        assert split.channels == 2 and mono.splits[name].channels == 1
        np.testing.assert_allclose(split.audio.mean(axis=1), mono.splits[name].audio, atol=1e-6)


# -- the DataModule's use of the cache ------------------------------------------------------


def test_second_datamodule_does_not_decode_again(
    synthetic_dm_kwargs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache was decoded again")

    monkeypatch.setattr(dm_module, "build_split", no_decoding)
    dm = MUSDBDataModule(**synthetic_dm_kwargs)
    dm.setup("fit")
    assert set(dm.splits) == {"train", "valid", "test"}
    assert all(isinstance(s.audio, np.memmap) for s in dm.splits.values())
    decoded = Path(synthetic_dm_kwargs["cache_dir"]) / "decoded"
    assert len(list(decoded.iterdir())) == 1  # one cache folder for these arguments


def test_datamodule_resumes_a_killed_build(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build killed during 'valid' keeps the finished 'train' and redoes the rest, ignoring
    the leftover scratch folder and stray array."""
    calls: list[str] = []

    def killed_in_valid(directory, split, tracks, rate, excerpt=None, channels=1):
        calls.append(split)
        if split == "valid":
            raise KeyboardInterrupt
        return build_split(directory, split, tracks, rate, excerpt, decode=_fake_decode)

    kwargs = {
        "root": str(synthetic_root),
        "rate": RATE,
        "context_frames": 8,
        "excerpt_seconds": None,
        "cache_dir": str(tmp_path),
    }
    monkeypatch.setattr(dm_module, "build_split", killed_in_valid)
    with pytest.raises(KeyboardInterrupt):
        MUSDBDataModule(**kwargs).prepare_data()
    (directory,) = (tmp_path / "decoded").iterdir()
    assert (directory / "train.json").exists()
    assert not (directory / "valid.json").exists()
    (directory / ".valid-leftover").mkdir()
    np.save(directory / ".valid-leftover" / "0.npy", np.ones((4, 5), dtype=np.float32))
    np.save(directory / "valid.npy", np.ones((4, 5), dtype=np.float32))

    calls.clear()

    def fake_build(directory, split, tracks, rate, excerpt=None, channels=1):
        calls.append(split)
        return build_split(directory, split, tracks, rate, excerpt, decode=_fake_decode)

    monkeypatch.setattr(dm_module, "build_split", fake_build)
    dm = MUSDBDataModule(**kwargs)
    dm.prepare_data()
    assert calls == ["valid", "test"]
    for name, split in dm.splits.items():
        expected = [_fake_decode(SimpleNamespace(name=n), RATE) for n in split.names]
        np.testing.assert_array_equal(split.audio, np.concatenate(expected, axis=1), name)


def test_unreadable_stem_file_is_named_when_the_tracks_are_listed(tmp_path: Path) -> None:
    """musdb probes every file while listing; ffmpeg-python's own error would only say
    "ffprobe error (see stderr output for detail)"."""
    stem = tmp_path / "musdb" / "test" / "Broken - Song.stem.mp4"
    stem.parent.mkdir(parents=True)
    stem.write_bytes(b"\0" * 4096)
    with pytest.raises(StemError, match="cannot list the test tracks") as info:
        open_tracks(tmp_path / "musdb", False, "test")
    assert str(stem) in str(info.value)  # from ffprobe's message
    assert "stderr output for detail" not in str(info.value)


# -- atomic writes (datamodules/files.py) ----------------------------------------------------


def test_write_atomic_replaces_text_and_bytes_with_a_plain_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "index.json"
    write_atomic(path, "häll\n")  # the folder is created
    assert path.read_bytes() == "häll\n".encode()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    path.chmod(0o640)
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert path.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
    assert sorted(p.name for p in path.parent.iterdir()) == ["index.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    import datamodules.files as files

    path = tmp_path / "result.json"
    path.write_text("old")

    def no_rename(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"new": 1})
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(path) as tmp:
            assert tmp.parent == path.parent and tmp.suffix == ".json"  # writers pick by it
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file


def test_write_json_atomic_keeps_nan_and_writes_numpy_floats(tmp_path: Path) -> None:
    payload = {"SDR": float("nan"), "SIR": np.float32(1.5), "rows": [1, 2]}
    write_json_atomic(tmp_path / "a.json", payload)
    text = (tmp_path / "a.json").read_text()
    assert text == json.dumps(payload, indent=2, allow_nan=True, default=float)
    assert '"SDR": NaN' in text and '"SIR": 1.5' in text
