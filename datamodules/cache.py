"""Decode MUSDB18 tracks once into one array per split, plus an index.

Decoding stem.mp4 files through ffmpeg and resampling is by far the slowest step of the data
path (the thesis's training was bound by it), so every split is decoded once, downmixed to
mono (or kept stereo: ``channels=2``), resampled and written as ``<split>.npy`` (n_sources,
samples) float32, (n_sources, 2, samples) in stereo, next to ``<split>.json`` (track names,
offsets, lengths, rate, channels). The index is written last and both are
moved into place atomically, so a killed run never leaves a cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import musdb
import numpy as np
import stempeg
from tqdm.auto import tqdm

from datamodules.activity import most_active_window
from datamodules.conventions import SOURCES, check_channels  # SOURCES: the stored order
from datamodules.files import write_atomic

#: Bumped whenever the cached content would change for the same arguments.
CACHE_VERSION = 1
#: librosa's default resampler (soxr) has so steep an anti-alias filter that the resampled audio
#: carries no energy near Nyquist; museval's 512-tap projections then become ill-conditioned
#: and ISR/SIR/SAR come out as garbage. The polyphase filter keeps BSS Eval sane (tested).
RESAMPLER = "polyphase"


class StemError(RuntimeError):
    """A track's audio cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class SplitAudio:
    """One decoded split: ``audio`` (n_sources, samples), or (n_sources, channels, samples) in
    stereo, holds the tracks back to back."""

    audio: np.ndarray
    names: list[str]
    offsets: np.ndarray
    lengths: np.ndarray
    rate: int
    sources: tuple[str, ...] = SOURCES

    @property
    def channels(self) -> int:
        return 1 if self.audio.ndim == 2 else int(self.audio.shape[1])

    def track(self, index: int) -> np.ndarray:
        """(n_sources, samples) of one track, (n_sources, channels, samples) in stereo."""
        start = int(self.offsets[index])
        return self.audio[..., start : start + int(self.lengths[index])]

    def sources_of(self, index: int) -> np.ndarray:
        """(n_sources, channels, samples) of one track, mono included (channels = 1): the
        shape every batch has."""
        track = self.track(index)
        return track[:, None, :] if track.ndim == 2 else track

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / self.rate


def _describe(error: BaseException) -> str:
    """The error with what ffmpeg/ffprobe printed: ffmpeg-python's own message is only
    "ffprobe error (see stderr output for detail)", and the detail is what says why (the
    stand-ins of a machine without ffmpeg say how to get it)."""
    stderr = getattr(error, "stderr", None)
    if isinstance(stderr, bytes) and stderr.strip():
        return stderr.decode(errors="replace").strip()
    return str(error)


def open_tracks(root: str | Path, is_wav: bool, subset: str) -> list:
    """musdb's tracks of ``subset`` (``train`` or ``test``) under ``root``. musdb probes every
    file with ffprobe on the way; a file it cannot probe raises StemError with ffprobe's
    message, which names the file."""
    try:
        return list(musdb.DB(root=str(root), is_wav=is_wav, subsets=subset))
    except Exception as error:  # ffmpeg.Error, or stempeg's own for an odd file
        raise StemError(
            f"{root}: cannot list the {subset} tracks ({'wav layout' if is_wav else 'stem.mp4'}): "
            f"{_describe(error)}"
        ) from error


def _expected_path(track, source: str) -> str:
    """Where ``source`` of a musdb track lives: its wav file, or the stem file and stream."""
    if track.is_wav:
        return os.path.join(os.path.dirname(track.path), f"{source}.wav")
    return (
        f"{track.path} (stream {track.sources[source].stem_id})"
        if source in track.sources
        else track.path
    )


def decode_track(track, rate: int, channels: int = 1) -> np.ndarray:
    """Read the four sources of a musdb track through musdb/stempeg, downmix to mono (or keep
    both channels: ``channels=2``) and resample to ``rate``. Returns (4, samples) float32, or
    (4, 2, samples) in stereo. Raises StemError naming the file.

    musdb decodes every source at the rate of the track's mixture, so a source file at
    another rate would silently come out time-stretched: such files are refused up front.
    """
    if not os.path.exists(track.path):
        raise StemError(f"track '{track.name}': {track.path} does not exist")
    mixture_rate = int(track.rate)
    odd_rates = {}
    for source in SOURCES:
        path = _expected_path(track, source)
        if source not in track.sources or (track.is_wav and not os.path.exists(path)):
            raise StemError(f"track '{track.name}': {source} is missing (expected {path})")
        if track.is_wav:
            try:
                file_rate = int(stempeg.Info(path).rate(0))
            except Exception as error:
                raise StemError(
                    f"track '{track.name}': cannot decode {source} from {path}: {_describe(error)}"
                ) from error
            if file_rate != mixture_rate:
                odd_rates[path] = file_rate
    if odd_rates:
        listed = ", ".join(f"{path} at {hz} Hz" for path, hz in odd_rates.items())
        raise StemError(
            f"track '{track.name}': {listed}, but its mixture {track.path} is at {mixture_rate} "
            "Hz; all stems of a track must share one sample rate"
        )
    decoded = []
    for source in SOURCES:
        try:
            audio = np.asarray(track.sources[source].audio, dtype=np.float32)
        except Exception as error:  # ffmpeg/stempeg raise many kinds for corrupt files
            raise StemError(
                f"track '{track.name}': cannot decode {source} from "
                f"{_expected_path(track, source)}: {_describe(error)}"
            ) from error
        if audio.ndim != 2 or audio.shape[0] == 0:
            # stempeg ignores ffmpeg's exit status: a failed decode is an empty array
            raise StemError(
                f"track '{track.name}': {_expected_path(track, source)} holds no audio "
                "(ffmpeg decoded nothing)"
            )
        if channels == 1:
            decoded.append(audio.mean(axis=1))
        elif audio.shape[1] != channels:
            raise StemError(
                f"track '{track.name}': {_expected_path(track, source)} has "
                f"{audio.shape[1]} channel(s); data.channels: {channels} needs stereo stems"
            )
        else:
            decoded.append(np.ascontiguousarray(audio.T))  # (channels, samples)
    lengths = {m.shape[-1] for m in decoded}
    if len(lengths) > 1:
        raise StemError(f"track '{track.name}': stems have different lengths {sorted(lengths)}")
    stacked = np.stack(decoded)
    if mixture_rate != rate:
        stacked = librosa.resample(
            stacked, orig_sr=mixture_rate, target_sr=rate, res_type=RESAMPLER, axis=-1
        )
    return np.ascontiguousarray(stacked, dtype=np.float32)


def cache_key(description: dict) -> str:
    """Short stable hash of everything that determines a split's cached content."""
    text = json.dumps({"version": CACHE_VERSION, **description}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_split(directory: Path, split: str, rate: int, channels: int = 1) -> SplitAudio | None:
    """The cached split, memory-mapped, or None when it was never completed."""
    index_path = directory / f"{split}.json"
    if not index_path.exists():
        return None
    index = json.loads(index_path.read_text())
    if index["rate"] != rate:
        raise StemError(
            f"cache {index_path} holds audio at {index['rate']} Hz, expected {rate} Hz; "
            "delete that folder to rebuild it"
        )
    if index.get("channels", 1) != channels:  # a mono cache never serves a stereo row
        raise StemError(
            f"cache {index_path} holds {index.get('channels', 1)} channel(s), expected "
            f"{channels}; delete that folder to rebuild it"
        )
    audio = np.load(directory / f"{split}.npy", mmap_mode="r")
    lengths = np.array([t["length"] for t in index["tracks"]], dtype=np.int64)
    if audio.shape != _shape(channels, int(lengths.sum())):
        raise StemError(f"cache {directory / split}.npy does not match its index; delete it")
    return SplitAudio(
        audio=audio,
        names=[t["name"] for t in index["tracks"]],
        offsets=np.array([t["offset"] for t in index["tracks"]], dtype=np.int64),
        lengths=lengths,
        rate=rate,
    )


def _shape(channels: int, samples: int) -> tuple[int, ...]:
    """The cached array's shape: mono keeps the thesis's (4, samples)."""
    return (len(SOURCES), samples) if channels == 1 else (len(SOURCES), channels, samples)


def build_split(
    directory: Path,
    split: str,
    tracks: Sequence,
    rate: int,
    excerpt_seconds: float | None = None,
    decode: Callable[..., np.ndarray] = decode_track,
    channels: int = 1,
) -> SplitAudio:
    """Decode ``tracks`` (musdb tracks) into ``directory/<split>.npy`` + ``.json`` and return the
    memory-mapped result. With ``excerpt_seconds`` each track is cut to its most active stretch
    (of the channels' mean, so mono and stereo rows train on the same excerpts). Peak memory is
    one track: tracks go to a scratch folder first, then into one array."""
    check_channels(channels)
    if not tracks:
        raise StemError(f"split '{split}' has no tracks")
    directory.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=directory))
    try:
        entries, offset = [], 0
        for i, track in enumerate(tqdm(tracks, desc=f"decoding {split}", unit="track")):
            # mono keeps the thesis's two-argument call (tests pass their own decoders)
            audio = decode(track, rate) if channels == 1 else decode(track, rate, channels)
            activity = audio if channels == 1 else audio.mean(axis=1)
            start, length = most_active_window(activity, rate, excerpt_seconds)
            np.save(scratch / f"{i}.npy", audio[..., start : start + length])
            entries.append({"name": track.name, "offset": offset, "length": length, "start": start})
            offset += length
        array = np.lib.format.open_memmap(
            scratch / "all.npy", mode="w+", dtype=np.float32, shape=_shape(channels, offset)
        )
        for i, entry in enumerate(entries):
            array[..., entry["offset"] : entry["offset"] + entry["length"]] = np.load(
                scratch / f"{i}.npy"
            )
        array.flush()
        del array
        os.replace(scratch / "all.npy", directory / f"{split}.npy")
        index = {"rate": rate, "sources": list(SOURCES), "tracks": entries}
        if channels != 1:  # mono indexes stay as they were
            index["channels"] = channels
        # the index last: until it exists, the split counts as never built
        write_atomic(directory / f"{split}.json", json.dumps(index, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    loaded = load_split(directory, split, rate, channels)
    assert loaded is not None
    return loaded
