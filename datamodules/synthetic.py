"""Synthetic data set in the MUSDB18 wav layout.

The default data set of the suite when no real MUSDB18 is present: it is read through the same
``musdb.DB(root=..., is_wav=True)`` path as the real data, so the whole loading, training and
evaluation pipeline runs everywhere.  Every track has four stems that a model can learn to tell
apart:

- ``vocals``: a sung melody (harmonic tones with vibrato, pitch scoops and per-note vowel
  formants) with rests, always including at least one stretch of >= 1 s of exact digital
  silence (for the silence metrics; guaranteed for tracks of >= 1.3 s);
- ``drums``: kick, snare and hi-hat on a 16th-note grid at 80-140 BPM;
- ``bass``: plucked low tones (40-200 Hz) following the chord progression;
- ``other``: sustained 3-4 note chords (organ- or saw-like), optionally with a noise pad.

Layout written under ``root``::

    synthetic.json                  manifest (generation arguments, track names)
    train/<track>/{mixture,vocals,drums,bass,other}.wav
    test/<track>/{mixture,vocals,drums,bass,other}.wav

Files are stereo 16-bit PCM.  The sources are quantised first and ``mixture.wav`` is the exact
integer sum of the quantised sources, so mixture == vocals + drums + bass + other holds exactly
both through soundfile and through musdb/stempeg (which decodes with ffmpeg to s16le).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from filelock import FileLock
from scipy import signal
from tqdm import tqdm

from datamodules.conventions import SOURCES  # the stems written next to mixture.wav
from datamodules.files import write_atomic

SPLITS: tuple[str, ...] = ("train", "test")
MANIFEST_NAME = "synthetic.json"
"""Manifest at the data set root holding the generation arguments."""
GENERATOR_VERSION = 2
"""Bumped whenever the generated audio changes, so stale trees are detected."""

_FORMAT = "synthetic-musdb18"
_TMP_DIR = ".synthetic_tmp"  # at the root, outside train/ and test/ (musdb lists every folder)
_LOCK_NAME = ".synthetic.lock"
_FILES = ("mixture", *SOURCES)
_MIX_PEAK = 0.9
_TABLE_SIZE = 1 << 15  # nearest-sample wavetable lookup, power of two
_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
# Chord progressions as scale degrees (0-based), one chord per bar.
_PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 0), (5, 3, 0, 4), (0, 3, 5, 4), (0, 0, 3, 4))
# Vowel formants (F1, F2, F3) in Hz and bandwidths.
_VOWELS = np.array(
    [
        [800.0, 1200.0, 2500.0],  # a
        [400.0, 2000.0, 2600.0],  # e
        [300.0, 2300.0, 3000.0],  # i
        [500.0, 900.0, 2400.0],  # o
        [350.0, 800.0, 2300.0],  # u
    ]
)
_FORMANT_BW = np.array([90.0, 120.0, 160.0])
_FORMANT_GAIN = np.array([1.0, 0.6, 0.35])


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def track_names(n_train: int = 10, n_test: int = 4, seed: int = 0) -> dict[str, list[str]]:
    """Track names per split: ``Synthetic 000 - Seed 0`` / ``Synthetic Test 000 - Seed 0``."""
    return {
        "train": [f"Synthetic {i:03d} - Seed {seed}" for i in range(n_train)],
        "test": [f"Synthetic Test {i:03d} - Seed {seed}" for i in range(n_test)],
    }


def generate_track(
    split_index: int, track_index: int, duration: float = 20.0, rate: int = 44100, seed: int = 0
) -> dict[str, np.ndarray]:
    """Generate one track as int16 arrays ``(samples, 2)`` keyed by mixture and source names.

    The track depends only on ``(seed, split_index, track_index, duration, rate)``.
    """
    rng = np.random.default_rng((seed, split_index, track_index))
    n = int(round(duration * rate))
    song = _song_plan(rng, duration)
    sources = {
        "vocals": _vocals(rng, song, n, rate),
        "drums": _drums(rng, song, n, rate),
        "bass": _bass(rng, song, n, rate),
        "other": _other(rng, song, n, rate),
    }
    return _mix_and_quantise(rng, sources)


def write_synthetic_musdb(
    root: str | Path,
    n_train: int = 10,
    n_test: int = 4,
    duration: float = 20.0,
    rate: int = 44100,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write (or verify) a deterministic synthetic MUSDB18-style wav tree at ``root``.

    Returns the root.  A complete tree whose manifest matches the arguments is left untouched;
    missing tracks are (re)generated; a manifest with other arguments, or a non-empty root
    without a manifest, raises ``ValueError``.  Each track is written to ``root/.synthetic_tmp``
    and renamed into place, so a killed run never leaves a half-written track in the tree (the
    leftover temp folder is removed by the next call).  Concurrent calls are serialised by a
    lock file.
    """
    args = _check_args(n_train, n_test, duration, rate, seed)
    root = Path(root).expanduser().absolute()
    names = track_names(n_train, n_test, seed)
    manifest = {
        "format": _FORMAT,
        "generator_version": GENERATOR_VERSION,
        "args": args,
        "tracks": names,
    }

    # Fast path: nothing is written (not even a lock file) when the tree is complete.
    existing = _read_manifest(root)
    if existing is None:
        _check_foreign(root)
    else:
        _check_compatible(root, existing, manifest)
        if existing.get("complete") and _is_complete(root, names):
            _check_unexpected_tracks(root, names)
            return root

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / _LOCK_NAME):  # one writer; the others wait and find it complete
        existing = _read_manifest(root)
        if existing is None:
            _check_foreign(root)
            write_atomic(root / MANIFEST_NAME, _dump_manifest({**manifest, "complete": False}))
        else:
            _check_compatible(root, existing, manifest)
        _check_unexpected_tracks(root, names)
        tmp_root = root / _TMP_DIR
        if tmp_root.exists():
            shutil.rmtree(tmp_root)  # leftover of a killed run

        todo = [
            (split_index, track_index, split, name)
            for split_index, split in enumerate(SPLITS)
            for track_index, name in enumerate(names[split])
            if not _track_complete(root / split / name)
        ]
        n_total = n_train + n_test
        with tqdm(
            total=n_total,
            initial=n_total - len(todo),
            disable=not progress,
            desc=f"synthetic MUSDB18 -> {root}",
            unit="track",
        ) as bar:
            for split_index, track_index, split, name in todo:
                audio = generate_track(split_index, track_index, duration, rate, seed)
                tmp = tmp_root / split / name
                tmp.mkdir(parents=True)
                for key, data in audio.items():
                    sf.write(tmp / f"{key}.wav", data, rate, subtype="PCM_16", format="WAV")
                final = root / split / name
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():  # incomplete folder (e.g. a file deleted by hand)
                    shutil.rmtree(final)
                os.replace(tmp, final)
                bar.update(1)
        if tmp_root.exists():
            shutil.rmtree(tmp_root)
        if not (existing or {}).get("complete") or todo:
            write_atomic(root / MANIFEST_NAME, _dump_manifest({**manifest, "complete": True}))
    return root


# --------------------------------------------------------------------------------------------
# Bookkeeping: manifest, lock, consistency checks
# --------------------------------------------------------------------------------------------


def _check_args(n_train: int, n_test: int, duration: float, rate: int, seed: int) -> dict[str, Any]:
    for key, value in (("n_train", n_train), ("n_test", n_test), ("rate", rate), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{key} must be an int, got {value!r}")
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(
            f"need n_train, n_test >= 0 and at least one track, got {n_train}, {n_test}"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if rate < 8000:
        raise ValueError(f"rate must be >= 8000 Hz, got {rate}")
    duration = float(duration)
    if not math.isfinite(duration) or duration < 1.0:
        raise ValueError(f"duration must be >= 1 s, got {duration}")
    return {
        "n_train": int(n_train),
        "n_test": int(n_test),
        "duration": duration,
        "rate": int(rate),
        "seed": int(seed),
    }


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable synthetic data set manifest ({err})") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: malformed synthetic data set manifest")
    return manifest


def _check_compatible(root: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    problems = []
    if existing.get("format") != _FORMAT:
        problems.append(f"format {existing.get('format')!r} != {_FORMAT!r}")
    if existing.get("generator_version") != wanted["generator_version"]:
        problems.append(
            f"generator_version {existing.get('generator_version')!r} "
            f"!= {wanted['generator_version']!r}"
        )
    old_args = existing.get("args") if isinstance(existing.get("args"), dict) else {}
    for key, value in wanted["args"].items():
        if old_args.get(key) != value:
            problems.append(f"{key}: on disk {old_args.get(key)!r}, requested {value!r}")
    if problems:
        raise ValueError(
            f"{root} already holds a different synthetic data set ({'; '.join(problems)}); "
            "use another root or delete it"
        )


def _check_foreign(root: Path) -> None:
    """Refuse to write into a non-empty folder that is not a synthetic data set."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory")
    foreign = sorted(p.name for p in root.iterdir() if not p.name.startswith(".synthetic"))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(
            f"{root} is not empty and has no {MANIFEST_NAME} (found: {shown}); refusing to mix "
            "a synthetic data set into it"
        )


def _check_unexpected_tracks(root: Path, names: dict[str, list[str]]) -> None:
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        extra = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and p.name not in names[split]
        )
        if extra:
            raise ValueError(
                f"{folder} holds track folders that are not part of this synthetic data set: "
                f"{extra[:5]}; refusing to mix data sets"
            )


def _track_complete(folder: Path) -> bool:
    return all((folder / f"{key}.wav").is_file() for key in _FILES)


def _is_complete(root: Path, names: dict[str, list[str]]) -> bool:
    if (root / _TMP_DIR).exists():
        return False
    return all(_track_complete(root / split / name) for split in SPLITS for name in names[split])


def _dump_manifest(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2) + "\n"


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


def _song_plan(rng: np.random.Generator, duration: float) -> dict[str, Any]:
    """Tempo, key and chord progression shared by all stems of a track."""
    bpm = rng.uniform(80.0, 140.0)
    bar = 240.0 / bpm
    minor = bool(rng.random() < 0.5)
    scale = _MINOR if minor else _MAJOR
    key = int(rng.integers(0, 12))
    prog = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    n_bars = int(math.ceil(duration / bar)) + 1
    # Chord pitch classes per bar: triad (+ 7th) built on the scale degree.
    chords = []
    for b in range(n_bars):
        degree = prog[b % len(prog)]
        tones = [key + scale[(degree + 2 * j) % 7] + 12 * ((degree + 2 * j) // 7) for j in range(4)]
        chords.append(tones)
    return {
        "bpm": bpm,
        "beat": 60.0 / bpm,
        "bar": bar,
        "n_bars": n_bars,
        "key": key,
        "scale": scale,
        "chords": np.array(chords),  # (n_bars, 4) semitones above C (root, third, fifth, seventh)
        "duration": duration,
    }


def _hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _wavetable(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """One period (``_TABLE_SIZE`` samples, float32) of sum_k amps[k] sin(2 pi k x + phases[k])."""
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=np.complex128)
    spectrum[1 : len(amps) + 1] = amps * (_TABLE_SIZE / 2) * np.exp(1j * (phases - np.pi / 2))
    return np.fft.irfft(spectrum, _TABLE_SIZE).astype(np.float32)


def _osc(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read a wavetable at a running phase given in cycles (>= 0, float64)."""
    idx = (cycles * _TABLE_SIZE).astype(np.int64)
    idx &= _TABLE_SIZE - 1
    return table[idx]


def _ramp(length: int) -> np.ndarray:
    """Raised-cosine ramp from 0 (first sample) towards 1."""
    return (0.5 - 0.5 * np.cos(np.pi * np.arange(length) / max(length, 1))).astype(np.float32)


def _pan(rng: np.random.Generator, mono: np.ndarray, width: float) -> np.ndarray:
    """Stereo ``(2, n)``: constant-power pan in [-width, width] and a small channel gain offset."""
    p = rng.uniform(-width, width)
    angle = (p + 1.0) * np.pi / 4.0
    gains = np.array([np.cos(angle), np.sin(angle)]) * np.sqrt(2.0)
    gains *= 10.0 ** (rng.uniform(-0.75, 0.75, size=2) / 20.0)
    return np.outer(gains.astype(np.float32), mono)


def _vocal_notes(rng: np.random.Generator, duration: float) -> list[tuple[float, float]]:
    """Note spans (s): phrases of 2-8 notes separated by 0.5-3 s rests, plus one silent stretch
    of 1.2-2.5 s (at most half the track, but >= 1.1 s for tracks >= 1.3 s) placed at random."""
    gap = min(rng.uniform(1.2, 2.5), max(duration / 2.0, min(1.1, duration - 0.2)))
    gap_start = rng.uniform(0.0, duration - gap)
    regions = [(0.0, gap_start), (gap_start + gap, duration)]
    notes: list[tuple[float, float]] = []
    for a, b in regions:
        t = a
        if a == 0.0 and rng.random() < 0.3:
            t += rng.uniform(0.5, 2.0)
        while t < b:
            for _ in range(int(rng.integers(2, 9))):
                length = rng.uniform(0.2, 0.8)
                if t + length > b:
                    if b - t < 0.2:
                        break
                    length = b - t
                notes.append((t, t + length))
                t += length
                if rng.random() < 0.3:
                    t += rng.uniform(0.02, 0.12)
                if t >= b:
                    break
            t += rng.uniform(0.5, 3.0)
    if not notes:  # very short tracks: sing once in the longer region
        a, b = max(regions, key=lambda r: r[1] - r[0])
        notes.append((a, a + min(0.5, b - a)))
    return notes


def _vocals(rng: np.random.Generator, song: dict[str, Any], n: int, rate: int) -> np.ndarray:
    n_harm = int(rng.integers(10, 21))
    k = np.arange(1, n_harm + 1)
    amps = k ** -rng.uniform(0.9, 1.6) * rng.uniform(0.7, 1.0, size=n_harm)
    table = _wavetable(amps, rng.uniform(0, 2 * np.pi, size=n_harm))
    vib_rate = rng.uniform(5.0, 6.0)
    vib_depth = rng.uniform(0.006, 0.02)  # relative frequency deviation (~10-35 cents)
    # Melody: random walk over the scale within the singer's range (~150-600 Hz).
    scale_pcs = (song["key"] + song["scale"]) % 12
    pitches = np.array([m for m in range(51, 75) if m % 12 in scale_pcs])
    centre = rng.uniform(56.0, 68.0)
    lo_idx = int(np.searchsorted(pitches, centre - 7))
    hi_idx = max(int(np.searchsorted(pitches, centre + 7)) - 1, lo_idx)
    pos = int(np.clip(np.argmin(np.abs(pitches - centre)), lo_idx, hi_idx))
    out = np.zeros(n, dtype=np.float32)
    for on, off in _vocal_notes(rng, song["duration"]):
        s0, s1 = int(round(on * rate)), min(int(round(off * rate)), n)
        length = s1 - s0
        if length < 16:
            continue
        pos = int(np.clip(pos + rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3]), lo_idx, hi_idx))
        f0 = float(_hz(pitches[pos]))
        t = np.arange(length) / rate
        phase = 2 * np.pi * vib_rate * t + rng.uniform(0, 2 * np.pi)
        vib = vib_depth * np.minimum(1.0, t / 0.25) * np.sin(phase)  # vibrato fades in
        scoop = rng.uniform(0.0, 0.04) * np.exp(-t / rng.uniform(0.03, 0.08))  # pitch scoop
        cycles = np.cumsum(f0 * (1.0 + vib) * (1.0 - scoop)) / rate + rng.random()
        x = _osc(table, cycles) * (1.0 + 3.0 * vib)  # slight tremolo with the vibrato
        # Vowel formants: parallel resonant band-pass peaks, a different vowel per note.
        formants = _VOWELS[int(rng.integers(len(_VOWELS)))] * rng.uniform(0.92, 1.08, size=3)
        y = 0.15 * x
        for fc, bw, g in zip(formants, _FORMANT_BW, _FORMANT_GAIN, strict=True):
            fc = min(fc, 0.45 * rate)
            b, a = signal.iirpeak(fc, fc / bw, fs=rate)
            y += g * signal.lfilter(b, a, x)
        y += _air(rng, length, rate, _rms(y), AIR_LEVEL_VOCALS)  # breath noise
        att = min(int(rng.uniform(0.02, 0.08) * rate), length // 2)
        rel = min(int(rng.uniform(0.04, 0.12) * rate), length // 2)
        env = np.ones(length, dtype=np.float32)
        env[:att] = _ramp(att)
        env[length - rel :] = _ramp(rel)[::-1]
        # Only the note's own span is written: rests stay exact digital zeros.
        out[s0:s1] += (y * env * rng.uniform(0.6, 1.0)).astype(np.float32)
    return _pan(rng, out, 0.15)


def _one_shots(rng: np.random.Generator, rate: int) -> dict[str, list[np.ndarray]]:
    """Two variants each of kick, snare and hi-hat samples (float32, peak 1)."""
    shots: dict[str, list[np.ndarray]] = {"kick": [], "snare": [], "hat": []}
    hp_cut = min(rng.uniform(6000.0, 8000.0), 0.45 * rate)
    hp = signal.butter(4, hp_cut, "highpass", fs=rate, output="sos")
    bp = signal.butter(2, [1000.0, min(7000.0, 0.45 * rate)], "bandpass", fs=rate, output="sos")
    for _ in range(2):
        # Kick: exponentially falling sine sweep with a click.
        n_k = int(0.4 * rate)
        t = np.arange(n_k) / rate
        f_hi, f_lo = rng.uniform(120.0, 180.0), rng.uniform(42.0, 60.0)
        freq = f_lo + (f_hi - f_lo) * np.exp(-t / rng.uniform(0.025, 0.05))
        kick = np.sin(2 * np.pi * np.cumsum(freq) / rate) * np.exp(-t / rng.uniform(0.12, 0.2))
        n_click = int(0.003 * rate)
        kick[:n_click] += 0.3 * rng.standard_normal(n_click)
        shots["kick"].append(kick)
        # Snare: band-passed noise burst plus a short tone.
        n_s = int(0.25 * rate)
        t = np.arange(n_s) / rate
        noise = signal.sosfilt(bp, rng.standard_normal(n_s)) * np.exp(-t / rng.uniform(0.05, 0.08))
        tone = np.sin(2 * np.pi * rng.uniform(170.0, 230.0) * t) * np.exp(-t / 0.04)
        shots["snare"].append(0.8 * noise / np.max(np.abs(noise)) + 0.5 * tone)
        # Hi-hat: high-passed short noise.
        n_h = int(0.12 * rate)
        t = np.arange(n_h) / rate
        decay = np.exp(-t / rng.uniform(0.012, 0.035))
        shots["hat"].append(signal.sosfilt(hp, rng.standard_normal(n_h)) * decay)
    for name, variants in shots.items():
        for i, shot in enumerate(variants):
            attack = max(int(0.001 * rate), 2)
            shot[:attack] *= _ramp(attack)
            fade = len(shot) // 5
            shot[len(shot) - fade :] *= _ramp(fade)[::-1]
            variants[i] = (shot / np.max(np.abs(shot))).astype(np.float32)
        shots[name] = variants
    return shots


def _drums(rng: np.random.Generator, song: dict[str, Any], n: int, rate: int) -> np.ndarray:
    step = song["beat"] / 4.0  # 16th note
    n_steps = int(song["duration"] / step) + 1
    bar_steps = np.arange(16)
    optional_kicks = np.isin(bar_steps, [3, 6, 10, 11, 14]) & (rng.random(16) < 0.3)
    kick_pat = np.isin(bar_steps, [0, 8]) | optional_kicks
    snare_pat = np.isin(bar_steps, [4, 12])
    hat_pat = bar_steps % (1 if rng.random() < 0.35 else 2) == 0
    steps = np.arange(n_steps)
    pos = steps % 16
    onsets = np.round(steps * step * rate).astype(np.int64)
    shots = _one_shots(rng, rate)
    out = np.zeros((2, n), dtype=np.float32)
    for name, pattern, extra, width in (
        ("kick", kick_pat, 0.04, 0.0),
        ("snare", snare_pat, 0.03, 0.2),
        ("hat", hat_pat, 0.06, 0.5),
    ):
        hits = pattern[pos] | (rng.random(n_steps) < extra)  # occasional fills
        hits &= rng.random(n_steps) > 0.03  # occasional dropped hits
        hits &= onsets < n
        velocity = rng.uniform(0.7, 1.0, size=n_steps)
        if name == "hat":
            velocity *= np.where(pos % 4 == 0, 1.0, 0.6)
        variant = rng.integers(0, 2, size=n_steps)
        mono = np.zeros(n, dtype=np.float32)
        for s in np.flatnonzero(hits):  # a few hundred hits: one slice add each
            shot = shots[name][variant[s]]
            o = onsets[s]
            length = min(len(shot), n - o)
            mono[o : o + length] += np.float32(velocity[s]) * shot[:length]
        out += _pan(rng, mono, width) * np.float32(rng.uniform(0.5, 1.0))
    return out


def _note_envelope(
    n: int, onsets: np.ndarray, ends: np.ndarray, rate: int, attack: float, release: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample note index and raised-cosine attack/release envelope (0 between notes).

    ``onsets`` must be increasing and start at 0.
    """
    keep = onsets < n
    onsets, ends = onsets[keep], ends[keep]
    idx = np.repeat(np.arange(len(onsets)), np.diff(np.append(onsets, n)))
    i = np.arange(n, dtype=np.int64)
    t_in = (i - onsets[idx]).astype(np.float32) / np.float32(attack * rate)
    t_left = (ends[idx] - i).astype(np.float32) / np.float32(release * rate)
    env = np.minimum(t_in, 1.0) * np.clip(t_left, 0.0, 1.0)
    env = 0.5 - 0.5 * np.cos(np.float32(np.pi) * env)
    return idx, env


def _bass(rng: np.random.Generator, song: dict[str, Any], n: int, rate: int) -> np.ndarray:
    per_bar = int(rng.choice([2, 4, 8]))
    note_s = song["bar"] / per_bar
    n_notes = int(song["duration"] / note_s) + 1
    j = np.arange(n_notes)
    chord = song["chords"][np.minimum(j // per_bar, song["n_bars"] - 1)]
    root = 28 + ((chord[:, 0] - 28) % 12)  # E1..D#2 (41-78 Hz)
    fifth = 28 + ((chord[:, 2] - 28) % 12)
    r = rng.random(n_notes)
    midi = np.where((j % per_bar == per_bar // 2) & (r < 0.5), fifth, root)
    midi = np.where(r > 0.85, midi + 12, midi)  # occasional octave jumps (<= ~156 Hz)
    onsets = np.round(j * note_s * rate).astype(np.int64)
    gate = rng.uniform(0.6, 0.95, size=n_notes)
    ends = onsets + np.round(note_s * rate * gate).astype(np.int64)
    idx, env = _note_envelope(n, onsets, ends, rate, 0.006, 0.02)
    since = (np.arange(n) - onsets[idx]).astype(np.float32)
    decay = np.float32(-1.0 / (rng.uniform(0.25, 0.8) * rate))
    env *= np.exp(since * decay)
    env *= rng.uniform(0.75, 1.0, size=n_notes).astype(np.float32)[idx]
    n_harm = int(rng.integers(3, 6))
    amps = np.array([1.0, 0.6, 0.35, 0.2, 0.1])[:n_harm] * rng.uniform(0.7, 1.0, size=n_harm)
    table = _wavetable(amps, rng.uniform(0, 2 * np.pi, size=n_harm))
    cycles = np.cumsum(_hz(midi)[idx]) / rate
    tone = _osc(table, cycles)
    tone += _air(rng, n, rate, _rms(tone), AIR_LEVEL)  # string and pick noise
    return _pan(rng, tone * env, 0.1)


def _other(rng: np.random.Generator, song: dict[str, Any], n: int, rate: int) -> np.ndarray:
    n_voices = int(rng.integers(3, 5))
    n_harm = 8
    k = np.arange(1, n_harm + 1)
    if rng.random() < 0.5:  # organ-like drawbars
        amps = np.where(np.isin(k, [1, 2, 4, 8]), 1.0 / np.sqrt(k), 0.15 / k)
    else:  # saw-ish, gently rolled off
        amps = (1.0 / k) * np.exp(-(k - 1) / rng.uniform(3.0, 6.0))
    amps = amps * rng.uniform(0.8, 1.0, size=n_harm)
    table = _wavetable(amps, rng.uniform(0, 2 * np.pi, size=n_harm))
    bar_len = song["bar"] * rate
    n_bars = int(n / bar_len) + 1
    onsets = np.round(np.arange(n_bars) * bar_len).astype(np.int64)
    ends = onsets + int(round(bar_len))
    attack, release = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.12)
    idx, env = _note_envelope(n, onsets, ends, rate, attack, release)
    t = np.arange(n, dtype=np.float32) / np.float32(rate)
    env *= 1.0 + 0.2 * _lfo(rng, t, 0.1, 0.5)  # slow swell
    low = rng.uniform(53.0, 60.0)  # close voicing within [low, low + 12): ~175-520 Hz
    chords = song["chords"][np.minimum(np.arange(n_bars), song["n_bars"] - 1)]
    out = np.zeros((2, n), dtype=np.float32)
    for v in range(n_voices):
        midi = low + ((chords[:, v] - low) % 12)
        freq = _hz(midi) * (1.0 + rng.uniform(-0.002, 0.002))
        cycles = np.cumsum(freq[idx]) / rate + rng.random()
        out += _pan(rng, _osc(table, cycles) * env, 0.4) * np.float32(rng.uniform(0.6, 1.0))
    out += _air(rng, n, rate, _rms(out), AIR_LEVEL) * env  # bow/key noise, follows the chords
    if rng.random() < 0.5:  # slowly breathing low-passed noise pad, decorrelated channels
        pad = _smooth_noise(rng, n, rate, rng.uniform(800.0, 2000.0))
        pad *= (0.6 + 0.4 * _lfo(rng, t, 0.05, 0.2)) * np.float32(
            0.15 * _rms(out) / max(_rms(pad), 1e-12)
        )
        out += pad
    return out


#: Relative RMS of the broadband "air" each pitched source carries (breath, string and key
#: noise, room tone). Real recordings have energy at every frequency; purely harmonic sources
#: leave near-empty spectral valleys, which make BSS Eval's 512-tap least-squares projections
#: ill-conditioned (the Gram matrix's condition number follows max/min of the power spectrum)
#: so that ISR/SIR/SAR come out as garbage (tests/test_evaluation.py pins this).
AIR_LEVEL_VOCALS = 0.06
AIR_LEVEL = 0.03


def _air(
    rng: np.random.Generator, n: int, rate: int, reference_rms: float, level: float
) -> np.ndarray:
    """White noise at ``level`` times ``reference_rms`` (float32)."""
    noise = rng.standard_normal(n, dtype=np.float32)
    return noise * np.float32(level * reference_rms / max(_rms(noise), 1e-12))


def _lfo(rng: np.random.Generator, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Sine with a random rate in [lo, hi] Hz and a random phase (float32)."""
    w, phase = np.float32(2 * np.pi * rng.uniform(lo, hi)), np.float32(rng.uniform(0, 2 * np.pi))
    return np.sin(w * t + phase)


def _smooth_noise(rng: np.random.Generator, n: int, rate: int, cutoff: float) -> np.ndarray:
    """Stereo ``(2, n)`` low-pass noise: white noise at ~2*cutoff, linearly interpolated."""
    step = max(int(round(rate / (2.0 * cutoff))), 1)
    coarse = rng.standard_normal((2, n // step + 2), dtype=np.float32)
    pos = np.arange(n, dtype=np.int64)
    i = pos // step
    frac = (pos - i * step).astype(np.float32) / np.float32(step)
    lo = coarse[:, i]
    return lo + frac * (coarse[:, i + 1] - lo)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))  # pairwise summation: deterministic


def _mix_and_quantise(
    rng: np.random.Generator, sources: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Set stem levels, scale the track and quantise to int16 ``(samples, 2)``.

    The mixture is the exact integer sum of the quantised sources.
    """
    gains = {name: 10.0 ** (rng.uniform(-3.0, 3.0) / 20.0) for name in ("drums", "bass", "other")}
    for name, gain in gains.items():
        sources[name] *= np.float32(gain / max(_rms(sources[name]), 1e-12))
    accompaniment = sources["drums"] + sources["bass"] + sources["other"]
    vocal_ratio = 10.0 ** (rng.uniform(-3.0, 3.0) / 20.0)  # vocals / accompaniment RMS
    sources["vocals"] *= np.float32(
        vocal_ratio * _rms(accompaniment) / max(_rms(sources["vocals"]), 1e-12)
    )
    mixture = accompaniment + sources["vocals"]
    # Peak target <= 0.9 minus the rounding headroom of four quantised sources.
    target = (_MIX_PEAK - 4.0 / 32768.0) * 10.0 ** (rng.uniform(-4.0, 0.0) / 20.0)
    scale = target / float(np.max(np.abs(mixture)))
    scale = min(scale, 0.99 / max(float(np.max(np.abs(s))) for s in sources.values()))
    out = {}
    for name in SOURCES:
        q = np.round(sources[name] * np.float32(scale * 32768.0))
        out[name] = np.ascontiguousarray(np.clip(q, -32768, 32767).astype(np.int16).T)
    mix = sum(out[name].astype(np.int32) for name in SOURCES)
    if np.max(np.abs(mix)) > int(_MIX_PEAK * 32768):
        raise AssertionError("synthetic mixture exceeds the peak bound")  # cannot happen
    return {"mixture": mix.astype(np.int16), **out}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: ``python -m datamodules.synthetic ROOT [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.synthetic",
        description="Write a synthetic data set in the MUSDB18 wav layout (musdb is_wav=True).",
    )
    parser.add_argument("root", type=Path, help="data set root (created if missing)")
    parser.add_argument("--n-train", type=int, default=10, help="training tracks (default 10)")
    parser.add_argument("--n-test", type=int, default=4, help="test tracks (default 4)")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds per track (default 20)"
    )
    parser.add_argument("--rate", type=int, default=44100, help="sample rate (default 44100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = write_synthetic_musdb(
            args.root,
            n_train=args.n_train,
            n_test=args.n_test,
            duration=args.duration,
            rate=args.rate,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"synthetic MUSDB18 ready at {root} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
