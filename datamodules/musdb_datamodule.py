"""MUSDB18 for Lightning: the thesis's splits, decoded once, served as random mixes.

Real MUSDB18 (stem.mp4 or the wav layout) is read through the ``musdb`` package. Without a
root (no argument, no ``$MUSDB_ROOT``) a synthetic MUSDB-format wav tree is generated and read
through exactly the same path, so every machine runs the real loading code.

Shapes, mono included (C = 1): training and validation batches ``mixture`` (B, C, T) and
``targets`` (B, N, C, T); full test tracks ``mixture`` (C, T) and ``targets`` (N, C, T), the N
targets in the order of ``target_names``.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import lightning as L
import musdb
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, TensorDataset

from datamodules.activity import most_active_window
from datamodules.cache import (
    SplitAudio,
    build_split,
    cache_key,
    load_split,
    open_tracks,
)
from datamodules.conventions import (
    SOURCES,
    STFTConfig,
    check_channels,
    chunk_samples,
    stft_config,
    target_names,
    targets_from_sources,
)
from datamodules.remix import RemixSampler, remix_piece, remix_streams
from datamodules.sampler import CoherentChunks, ExcerptSampler, RandomMixBatches, RandomMixSampler
from datamodules.synthetic import GENERATOR_VERSION, write_synthetic_musdb

#: Default location of decoded caches and of the generated synthetic data set.
DEFAULT_CACHE_DIR = Path(os.environ.get("MSS_CACHE_DIR", ".cache"))
#: How training examples are made (``data.mixing``): thesis random mixes, a track's own mix
#: (frame-level epochs), or the chimera paper's 0 dB remix of vocals and accompaniment.
MIXINGS: tuple[str, ...] = ("random", "coherent", "remix_0db")
#: The synthetic set a config without ``data.root`` (and no ``$MUSDB_ROOT``) trains on;
#: ``data.synthetic`` overrides any of these.
SYNTHETIC_DEFAULTS: dict[str, float | int] = {
    "n_train": 10,
    "n_test": 4,
    "duration": 20.0,
    "seed": 0,
}
#: The splits ``data.tracks`` may name.
SPLITS: tuple[str, ...] = ("train", "valid", "test")


def resolve_root(root: str | None) -> str | None:
    """The MUSDB18 root to use: the argument, else ``$MUSDB_ROOT``, else None (synthetic)."""
    return root or os.environ.get("MUSDB_ROOT") or None


def detect_is_wav(root: Path) -> bool:
    """True for the decoded wav layout, False for stem.mp4 files."""
    for subset in ("train", "test"):
        if any((root / subset).glob("*.stem.mp4")):
            return False
        if any((root / subset).glob("*/mixture.wav")):
            return True
    raise FileNotFoundError(
        f"{root} holds no MUSDB18 tracks: expected train/ and test/ with *.stem.mp4 files "
        "or one folder per track with mixture.wav and the stems (wav layout)"
    )


def check_musdb_root(root: str | Path) -> bool:
    """Refuse a MUSDB18 root that does not exist or holds no tracks in a layout musdb reads,
    in both ``train/`` and ``test/``, naming the path; returns whether it is the wav layout.
    Reads file names only, so a table can check it before planning anything."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"MUSDB18 root {path} does not exist (MUSDB_ROOT or data.root)")
    is_wav = detect_is_wav(path)
    pattern = "*/mixture.wav" if is_wav else "*.stem.mp4"
    for subset in ("train", "test"):
        if not any((path / subset).glob(pattern)):
            raise FileNotFoundError(
                f"MUSDB18 root {path}: {path / subset} holds no tracks ({pattern}); "
                "MUSDB18 has train/ (100 tracks) and test/ (50 tracks)"
            )
    return is_wav


def official_validation_tracks() -> list[str]:
    """musdb's own validation track list (from the package's setup file)."""
    setup = yaml.safe_load((Path(musdb.__file__).parent / "configs" / "mus.yaml").read_text())
    return list(setup["validation_tracks"])


def validation_names(train_names: list[str], fraction: float, seed: int) -> list[str]:
    """The thesis's 80/20 split of the 100 training tracks into train/valid.

    musdb's official validation tracks are taken first (14 of the thesis's 20 on MUSDB18);
    the rest are drawn with ``seed`` from the remaining tracks. On data sets without those
    names (synthetic) the whole selection is seeded. At least one track stays on each side.
    """
    if len(train_names) < 2:
        raise ValueError(
            f"need at least 2 training tracks for a train/valid split, got {len(train_names)}"
        )
    wanted = min(len(train_names) - 1, max(1, round(fraction * len(train_names))))
    official = [n for n in official_validation_tracks() if n in train_names]
    chosen = official[:wanted]
    rest = sorted(set(train_names) - set(chosen))
    chosen += random.Random(seed).sample(rest, wanted - len(chosen))
    return sorted(chosen)


class FullTracks(Dataset):
    """Whole tracks for test/predict: mixture (C, T), targets (n_targets, C, T), name."""

    def __init__(
        self, split: SplitAudio, targets: str | list[str], max_seconds: float | None = None
    ) -> None:
        self.split = split
        self.targets = targets
        self.max_samples = None if max_seconds is None else int(max_seconds * split.rate)

    def __len__(self) -> int:
        return len(self.split.names)

    def __getitem__(self, index: int) -> dict:
        sources = torch.from_numpy(self.split.sources_of(index)[..., : self.max_samples].copy())
        return {
            "name": self.split.names[index],
            "mixture": sources.sum(dim=0),
            "targets": targets_from_sources(sources, self.targets, dim=-3),
        }


class RemixPieces(Dataset):
    """``mixing: remix_0db``'s test pieces: a track's own silence-removed vocals and
    accompaniment at 0 dB, the first ``max_seconds`` (``datamodules.remix.remix_piece``)."""

    def __init__(self, split: SplitAudio, max_seconds: float | None = None) -> None:
        self.split = split
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.split.names)

    def __getitem__(self, index: int) -> dict:
        targets = torch.from_numpy(remix_piece(self.split, index, self.max_seconds))
        return {"name": self.split.names[index], "mixture": targets.sum(dim=0), "targets": targets}


class MUSDBDataModule(L.LightningDataModule):
    """Train/valid/test splits of the thesis over MUSDB18 or its synthetic stand-in.

    Args:
        root: MUSDB18 root; None uses ``$MUSDB_ROOT`` or, without it, the synthetic data set.
        is_wav: wav layout (True) or stem.mp4 (False); None detects it from the files.
        rate: sample rate of the models (thesis 32 kHz; other papers 16 kHz or 44.1 kHz).
        targets: "vocals" (vocals + accompaniment), "all" (the four MUSDB sources), or a list
            of MUSDB sources (``[vocals, drums]``): the targets of every batch, in that order.
        context_frames: STFT frames per training example (64 or 8 in the thesis).
        batch_size: examples per training batch (Table 3.1: 32).
        excerpt_seconds: most-active stretch kept per training track (None: whole tracks).
        valid_fraction: share of the training tracks held out for validation.
        valid_chunks_per_track: fixed validation chunks per track (None: the whole track).
        valid_tracks: validate on only this many of the held-out tracks, drawn once with
            ``seed`` (Sams-Net: "1 complete track randomly selected from" the 14 official
            validation tracks); the others stay out of training too. None: all of them.
        max_train_tracks, max_test_tracks: cap the number of tracks (smoke runs).
        test_max_seconds: cut test tracks to their first seconds (smoke runs).
        test_subset: "test" (the 50 test tracks) or "train" (all training tracks, whole; the
            oracle experiments of thesis Table 5.3 are measured there).
        gain_range: random source gains of the augmentation.
        channel_swap: probability of swapping a source's left and right channels in a
            random mix (Uhlich et al. 2017's augmentation, Sams-Net); needs ``channels: 2``.
        train_on_device: keep the training split on the training device when it fits.
        seed: seeds the split and the random mixes.
        synthetic: arguments of ``write_synthetic_musdb`` for the stand-in data set.
        overfit: the single-excerpt protocol of thesis Table 4.4, ``{"seconds": 2.0, "shift":
            0.0, "track": None}``: training, validation and test all use one excerpt of a
            training track (``track`` by name, default the first) where all sources are most
            active; see ``ExcerptSampler`` for ``shift``.
        cache_dir: where decoded splits (and the synthetic data) are kept.
        stft: the row's STFT (``STFTConfig``; None: the thesis's 2048 / 512, periodic Hann, DC
            dropped), linked into the model; sizes the chunks (``chunk_samples``).
        channels: 1 (mono downmix, the thesis) or 2 (stereo); linked into the model. The
            decoded cache keys on it.
        mixing: how training examples are made (``MIXINGS``): "random" (thesis 3.3.2: a random
            chunk of a random track per source, random gains), "coherent" (a track's own
            sources at unit gain on a grid holding every STFT frame once per epoch), or
            "remix_0db" (the chimera paper: silence-removed vocals and accompaniment of
            independent random tracks at equal energy; needs ``targets: vocals``; validation
            is a fixed set of such remixes, test one 0 dB piece per track of
            ``test_max_seconds``; ``datamodules.remix``).
        tracks: fixed track lists per split, ``{"train": [...], "valid": [...], "test":
            [...]}`` (any of them; names of musdb's train or test subset). A split not given
            follows the default rule (``valid`` drawn from ``train`` with ``valid_fraction``).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        root: str | None = None,
        is_wav: bool | None = None,
        rate: int = 32000,
        targets: str | list[str] = "vocals",
        context_frames: int = 64,
        batch_size: int = 32,
        excerpt_seconds: float | None = 150.0,
        valid_fraction: float = 0.2,
        valid_chunks_per_track: int | None = None,
        valid_tracks: int | None = None,
        max_train_tracks: int | None = None,
        max_test_tracks: int | None = None,
        test_max_seconds: float | None = None,
        test_subset: str = "test",
        gain_range: tuple[float, float] = (0.25, 1.25),
        channel_swap: float = 0.0,
        train_on_device: bool = True,
        seed: int = 0,
        synthetic: dict | None = None,
        overfit: dict | None = None,
        cache_dir: str | None = None,
        stft: STFTConfig | None = None,
        channels: int = 1,
        mixing: str = "random",
        tracks: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        if test_subset not in ("test", "train"):
            raise ValueError(f"test_subset must be 'test' or 'train', got '{test_subset}'")
        try:
            self._target_names = target_names(targets)
            self.stft = stft_config(stft)
            self.channels = check_channels(channels)
        except ValueError as error:
            raise ValueError(f"data: {error}") from None
        if mixing not in MIXINGS:
            raise ValueError(f"data.mixing must be one of {MIXINGS}, got {mixing!r}")
        if mixing == "remix_0db" and targets != "vocals":
            raise ValueError(
                f"data.mixing remix_0db remixes vocals against the accompaniment: it needs "
                f"targets: vocals, got {targets!r}"
            )
        if overfit and mixing != "random":
            raise ValueError("data.overfit is a mixing of its own: leave data.mixing at random")
        if not 0.0 <= valid_fraction < 1.0:
            raise ValueError(f"data.valid_fraction must lie in [0, 1), got {valid_fraction}")
        if valid_tracks is not None and valid_tracks < 1:
            raise ValueError(f"data.valid_tracks must be at least 1 (or null), got {valid_tracks}")
        if not 0.0 <= channel_swap <= 1.0:
            raise ValueError(f"data.channel_swap is a probability in [0, 1], got {channel_swap}")
        if channel_swap and (channels != 2 or mixing != "random" or overfit):
            raise ValueError(
                f"data.channel_swap swaps the channels of randomly mixed stereo sources: it needs "
                f"channels: 2 and mixing: random, got channels: {channels}, mixing: {mixing}"
                + (", overfit" if overfit else "")
            )
        self.tracks = _check_track_lists(tracks)
        self.save_hyperparameters()
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        self.chunk = chunk_samples(context_frames, self.stft.n_fft, self.stft.hop)
        self.splits: dict[str, SplitAudio] = {}
        self._sampler: RandomMixSampler | CoherentChunks | RemixSampler | ExcerptSampler | None = (
            None
        )

    @property
    def target_names(self) -> tuple[str, ...]:
        return self._target_names

    @property
    def has_validation(self) -> bool:
        """False with ``valid_fraction: 0`` and no ``tracks.valid``: then there is no
        validation loop (the model monitors its training loss instead)."""
        if self.hparams.overfit:
            return True
        return bool(self.tracks.get("valid")) or (
            "valid" not in self.tracks and self.hparams.valid_fraction > 0
        )

    @property
    def data_source(self) -> str:
        """What the numbers are measured on, for the provenance of results tables."""
        root = resolve_root(self.hparams.root)
        return f"MUSDB18 at {root}" if root else "synthetic MUSDB-format data (generated)"

    # -- locating and decoding --------------------------------------------------------------

    def _root(self) -> tuple[Path, bool]:
        root = resolve_root(self.hparams.root)
        if root is None:
            options = {**SYNTHETIC_DEFAULTS, **(self.hparams.synthetic or {})}
            # The generator version is part of the name: a new generator never meets an old tree.
            folder = f"synthetic-musdb-v{GENERATOR_VERSION}-" + "-".join(
                f"{k}{v}" for k, v in sorted(options.items())
            )
            path = write_synthetic_musdb(self.cache_dir / folder, **options)
            return Path(path), True
        path = Path(root).expanduser()
        is_wav = check_musdb_root(path)
        return path, self.hparams.is_wav if self.hparams.is_wav is not None else is_wav

    def _split_tracks(self, root: Path, is_wav: bool) -> dict[str, list]:
        db_train = open_tracks(root, is_wav, "train")
        db_test = open_tracks(root, is_wav, "test")
        if len(db_train) == 0 or len(db_test) == 0:
            raise FileNotFoundError(
                f"{root}: found {len(db_train)} train and {len(db_test)} test tracks "
                f"({'wav layout' if is_wav else 'stem.mp4'}); both subsets are needed"
            )
        listed = self._listed_tracks(root, db_train, db_test)
        pool = listed.get("train", db_train)
        if "valid" in listed:
            valid = {t.name for t in listed["valid"]}
        elif self.hparams.valid_fraction > 0:
            names = [t.name for t in pool]
            valid = set(validation_names(names, self.hparams.valid_fraction, self.hparams.seed))
        else:
            valid = set()
        held_out = listed.get("valid", [t for t in pool if t.name in valid])
        if self.hparams.valid_tracks is not None and len(held_out) > self.hparams.valid_tracks:
            # Drawn once with the data seed: early stopping compares the same track every epoch.
            drawn = random.Random(self.hparams.seed).sample(
                sorted(t.name for t in held_out), self.hparams.valid_tracks
            )
            held_out = [t for t in held_out if t.name in drawn]
        tracks = {
            "train": [t for t in pool if t.name not in valid],
            "valid": held_out,
            "test": listed.get(
                "test", list(db_test) if self.hparams.test_subset == "test" else list(db_train)
            ),
        }
        if not tracks["train"]:
            raise ValueError(f"{root}: no training track left after the validation split")
        if listed and not (self.hparams.test_subset == "train" and "test" not in listed):
            self._refuse_overlap(root, tracks)
        caps = {"train": self.hparams.max_train_tracks, "test": self.hparams.max_test_tracks}
        return {name: ts[: caps.get(name)] for name, ts in tracks.items()}

    @staticmethod
    def _refuse_overlap(root: Path, tracks: dict[str, list]) -> None:
        """Listed splits may mix musdb's subsets (DSD100's lists do): a track the model is
        tested on must not be one it trained or was validated on."""
        test = {t.name for t in tracks["test"]}
        for split in ("train", "valid"):
            shared = sorted(test & {t.name for t in tracks[split]})
            if shared:
                raise ValueError(
                    f"data.tracks on {root}: {len(shared)} track(s) in both {split} and test: "
                    f"{shared[:5]}; list them in one split only"
                )

    def _listed_tracks(self, root: Path, db_train: list, db_test: list) -> dict[str, list]:
        """The tracks of ``data.tracks`` by split; a name that is in neither subset of the data
        set, or in two splits, is an error naming it."""
        by_name = {t.name: t for t in [*db_train, *db_test]}
        missing = {
            split: [name for name in names if name not in by_name]
            for split, names in self.tracks.items()
        }
        missing = {split: names for split, names in missing.items() if names}
        if missing:
            found = ", ".join(
                f"{split}: {len(self.tracks[split]) - len(names)} of {len(self.tracks[split])}"
                for split, names in missing.items()
            )
            raise ValueError(
                f"data.tracks names tracks that {root} does not hold ({found} found): "
                + "; ".join(f"{split}: {names}" for split, names in missing.items())
            )
        seen: dict[str, str] = {}
        for split, names in self.tracks.items():
            for name in names:
                if name in seen:
                    raise ValueError(f"data.tracks: '{name}' is in both {seen[name]} and {split}")
                seen[name] = split
        return {split: [by_name[name] for name in names] for split, names in self.tracks.items()}

    def prepare_data(self) -> None:
        """Decode every split once (rank 0 only under DDP); later runs find the cache."""
        self._load_splits()

    def _load_splits(self) -> dict[str, SplitAudio]:
        if self.splits:
            return self.splits
        root, is_wav = self._root()
        tracks = self._split_tracks(root, is_wav)
        description = {
            "root": str(root.resolve()),
            "is_wav": is_wav,
            "rate": self.hparams.rate,
            "excerpt_seconds": self.hparams.excerpt_seconds,
            "splits": {name: [t.name for t in ts] for name, ts in tracks.items()},
        }
        if self.channels != 1:  # mono caches keep their keys; a mono one never serves stereo
            description["channels"] = self.channels
        directory = self.cache_dir / "decoded" / cache_key(description)
        for name, split_tracks in tracks.items():
            if not split_tracks:  # no validation split
                continue
            split = load_split(directory, name, self.hparams.rate, self.channels)
            if split is None:
                excerpt = self.hparams.excerpt_seconds if name == "train" else None
                split = build_split(
                    directory,
                    name,
                    split_tracks,
                    self.hparams.rate,
                    excerpt,
                    channels=self.channels,
                )
            self.splits[name] = split
        return self.splits

    # -- Lightning hooks ----------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        splits = self._load_splits()
        if stage in (None, "fit") and self._sampler is None and self.hparams.overfit:
            excerpt = torch.from_numpy(self.overfit_excerpt().track(0).copy())
            shift = float(self.hparams.overfit.get("shift", 0.0))
            self._sampler = ExcerptSampler(excerpt, self.chunk, shift)
        if stage in (None, "fit") and self._sampler is None:
            train = splits["train"]
            device = self._training_device(train)
            mixing = self.hparams.mixing
            if mixing == "remix_0db":
                self._sampler = RemixSampler(remix_streams(train, self.chunk), self.chunk, device)
                return
            audio = torch.from_numpy(np.array(train.audio)).to(device)  # copy out of the memmap
            offsets, lengths = torch.from_numpy(train.offsets), torch.from_numpy(train.lengths)
            if mixing == "coherent":
                stride = self.hparams.context_frames * self.stft.hop
                self._sampler = CoherentChunks(
                    audio, offsets, lengths, self.chunk, stride, names=train.names
                )
                return
            self._sampler = RandomMixSampler(
                audio,
                offsets,
                lengths,
                self.chunk,
                tuple(self.hparams.gain_range),
                names=train.names,
                channel_swap=self.hparams.channel_swap,
            )

    def overfit_excerpt(self) -> SplitAudio:
        """The one excerpt of the overfit protocol, as a one-track split."""
        options = {"seconds": 2.0, "track": None, **(self.hparams.overfit or {})}
        train = self._load_splits()["train"]
        name = options["track"] or train.names[0]
        if name not in train.names:
            raise ValueError(f"overfit track '{name}' is not a training track: {train.names}")
        audio = train.track(train.names.index(name))
        activity = np.asarray(audio if audio.ndim == 2 else audio.mean(axis=1))
        start, length = most_active_window(activity, train.rate, options["seconds"])
        return SplitAudio(
            audio=np.ascontiguousarray(audio[..., start : start + length]),
            names=[f"{name} ({options['seconds']:g} s excerpt at {start / train.rate:.2f} s)"],
            offsets=np.zeros(1, dtype=np.int64),
            lengths=np.array([length], dtype=np.int64),
            rate=train.rate,
        )

    def _training_device(self, train: SplitAudio) -> torch.device:
        """The trainer's device when the training split fits in half its free memory."""
        if not self.hparams.train_on_device or self.trainer is None:
            return torch.device("cpu")
        device = self.trainer.strategy.root_device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if train.audio.nbytes > free // 2:
                return torch.device("cpu")
        return device if device.type in ("cuda", "mps") else torch.device("cpu")

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        assert self._sampler is not None, "call setup('fit') first"
        rank = self.trainer.global_rank if self.trainer is not None else 0
        batches = RandomMixBatches(
            self._sampler,
            self.hparams.batch_size,
            self.hparams.targets,
            seed=self.hparams.seed,
            epoch=self._current_epoch,
            rank=rank,
            world_size=self.trainer.world_size if self.trainer is not None else 1,
        )
        # Batches are made whole in this process (one gather each): no loader workers, so
        # Lightning's warning about __len__ with several workers does not apply.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        return DataLoader(batches, batch_size=None)

    def validation_chunks(self) -> dict[str, torch.Tensor]:
        """Fixed, deterministic validation examples: consecutive chunks of every validation
        track at unit gain (capped at ``valid_chunks_per_track``); with ``mixing: remix_0db``
        as many 0 dB remixes of the validation tracks, drawn once with the seed."""
        if not self.has_validation:
            raise ValueError("no validation split (data.valid_fraction: 0, no data.tracks.valid)")
        split = self.overfit_excerpt() if self.hparams.overfit else self._load_splits()["valid"]
        chunks = []
        for index in range(len(split.names)):
            track = torch.from_numpy(split.sources_of(index).copy())
            n = track.shape[-1] // self.chunk
            if self.hparams.valid_chunks_per_track is not None:
                n = min(n, self.hparams.valid_chunks_per_track)
            chunks.extend(track[..., i * self.chunk : (i + 1) * self.chunk] for i in range(n))
        if not chunks:
            raise ValueError(
                f"validation tracks {split.names} are all shorter than one chunk "
                f"({self.chunk} samples)"
            )
        if self.hparams.mixing == "remix_0db":
            generator = torch.Generator().manual_seed(self.hparams.seed)
            targets = RemixSampler(
                remix_streams(split, self.chunk, "validation"), self.chunk
            ).sample(len(chunks), generator)
            return {"mixture": targets.sum(dim=1), "targets": targets}
        sources = torch.stack(chunks)
        return {
            "mixture": sources.sum(dim=1),
            "targets": targets_from_sources(sources, self.hparams.targets, dim=-3),
        }

    def val_dataloader(self) -> DataLoader | list:
        if not self.has_validation:
            # no validation loop; Lightning warns about the empty list, which is the point
            warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
            return []
        chunks = self.validation_chunks()
        # "index": which chunk, so that a metric gathered over DDP ranks counts the chunks the
        # distributed sampler repeats (to give every rank as many) once.
        index = torch.arange(len(chunks["mixture"]))
        dataset = TensorDataset(chunks["mixture"], chunks["targets"], index)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            collate_fn=lambda items: {
                "mixture": torch.stack([m for m, _, _ in items]),
                "targets": torch.stack([t for _, t, _ in items]),
                "index": torch.stack([i for _, _, i in items]),
            },
        )

    def test_dataloader(self) -> DataLoader:
        split = self.overfit_excerpt() if self.hparams.overfit else self._load_splits()["test"]
        if self.hparams.mixing == "remix_0db":
            dataset: Dataset = RemixPieces(split, self.hparams.test_max_seconds)
        else:
            dataset = FullTracks(split, self.hparams.targets, self.hparams.test_max_seconds)
        return DataLoader(dataset, batch_size=None)


def _check_track_lists(tracks: Mapping[str, list[str]] | None) -> dict[str, list[str]]:
    """``data.tracks`` as ``{split: [names]}``; unknown splits, names that are not strings and
    repeated names are errors naming the option."""
    if tracks is None:
        return {}
    if not isinstance(tracks, Mapping):
        raise ValueError(f"data.tracks must map splits {SPLITS} to track lists, got {tracks!r}")
    unknown = sorted(set(tracks) - set(SPLITS))
    if unknown:
        raise ValueError(f"data.tracks: unknown splits {unknown}, expected some of {SPLITS}")
    checked = {}
    for split, names in tracks.items():
        names = [names] if isinstance(names, str) else list(names or [])
        if not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"data.tracks.{split} must be a list of track names, got {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"data.tracks.{split} names a track twice: {names}")
        checked[split] = names
    if "train" in checked and not checked["train"]:
        raise ValueError("data.tracks.train is empty")
    if "test" in checked and not checked["test"]:
        raise ValueError("data.tracks.test is empty")
    return checked


__all__ = ["MIXINGS", "MUSDBDataModule", "SOURCES"]
