"""Results fingerprints: one small, pinned result per versioned class (sweeps/identity.py).

A run folder's hash holds the ``results_version`` of every class its config names (with their
base classes). A change that alters a class's results must bump that version, or finished runs
made by the old code keep being shown as current. This module makes the bump impossible to
forget silently: every versioned class has at least one *fingerprint*, a small deterministic
CPU computation of what that class produces (a network's output on a seeded input; a seeded
model's validation loss and SDR on a tiny data set, its test loss and museval scores on one
short track and its first training step; a data module's batches), reduced to a flat dict of
named floats.

Each fingerprint is recorded in ``tests/results_fingerprints.json`` under its *version key*:
exactly the results versions that enter the hash of a run doing that computation
(``sweeps.identity.results_versions`` of the configs involved, on a data root: see
:data:`WAV_SET`), e.g. ``MDenseNet=1,MMDenseNet=1,MUSDBDataModule=1,Separator=1,
SpectrogramSeparator=1``. The store is append-only: the same key must always give the same
numbers (``tests/test_results_version.py``), a bumped version gives a new key, recorded once.

A run's hash also leaves out every value equal to its class's constructor default, so a changed
default changes results without changing any hash. The defaults are therefore *pinned* too, in
``tests/results_defaults.json``: ``sweeps.identity.class_defaults`` of every versioned class, of the
``Trainer`` and of the library callbacks the experiments name (:data:`LIBRARY_CLASSES`), under
the same kind of version key (for a library class, the key of ``Separator``, whose version every
run's hash holds). A recorded default never changes under its key; new parameters may appear.
Both stores are written by::

    python -m tests.fingerprints record           # adds entries for new keys, never overwrites
    python -m tests.fingerprints record --fresh   # may also replace entries not yet committed
    python -m tests.fingerprints record --reset NAME [NAME ...]   # replace these (or "all")
    python -m tests.fingerprints check            # compare only, write nothing
    python -m tests.fingerprints list             # names and current keys

Everything runs on one CPU thread with deterministic algorithms and fixed seeds, on a tiny
wav data set written here (not ``datamodules.synthetic``, whose generator has its own
version), so the numbers do not depend on the machine's core count.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib
import inspect
import io
import itertools
import json
import logging
import math
import os
import pkgutil
import random
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import soundfile as sf
import torch
from torch import nn

from datamodules.conventions import STFTConfig
from datamodules.files import write_atomic
from lightning_modules.separators.separator import Separator
from sweeps import identity
from sweeps.identity import results_versions

STORE = Path(__file__).with_name("results_fingerprints.json")
DEFAULTS_STORE = Path(__file__).with_name("results_defaults.json")
REPO = Path(__file__).resolve().parent.parent

#: Tolerances. On one machine the numbers are bit-identical run to run (one thread, fixed
#: seeds, deterministic algorithms). Across CPUs they are not: other SIMD kernels change float32
#: sums in their last bits. Measured by forcing other kernels here (ATEN_CPU_CAPABILITY=avx2 or
#: =default, ONEDNN_MAX_CPU_ISA=AVX2, OPENBLAS_CORETYPE=Haswell on an AVX-512 machine): network
#: outputs moved by up to 1.5e-5 relative, the size of a training step by up to 5.5e-5 (AdamW
#: moves weights whose gradient is rounding noise by +-lr, see ``lightning_numbers``), museval's
#: dB values by less than 1e-4 dB. The tolerances leave ten times that or more, and stay far
#: below what a change of behaviour does (percents, tenths of a dB).
RTOL = 1e-3
#: Absolute tolerance of numbers near zero (losses, output means in float32).
ATOL = 1e-6
#: museval's dB metrics (and the validation SDR) are compared absolutely: a dB value already is
#: a ratio, and near 0 dB a relative tolerance means nothing. (museval rounds frame values to
#: 1e-5 dB.)
ATOL_DB = 1e-3
DB_METRICS = ("SDR", "SIR", "SAR", "ISR", "PES", "EPS", "sdr")

Numbers = dict[str, float | None]


# --------------------------------------------------------------------------------------------
# Fingerprints and their keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    """``name`` is ``<versioned class>/<variant>``; ``configs`` are the model configs (class
    paths with init args) of every run the computation stands for (a combination of trained
    models names its members' configs too: their hashes are part of its run's hash)."""

    name: str
    configs: tuple[dict[str, Any], ...]
    compute: Callable[[Workspace], Numbers]

    @property
    def subject(self) -> str:
        """The versioned class whose results this fingerprint pins."""
        return self.name.split("/", 1)[0]

    def versions(self) -> dict[str, int]:
        return run_versions(*self.configs)

    @property
    def key(self) -> str:
        """The version key: ``Class=version`` pairs, sorted, comma-separated."""
        return version_key(self.versions())


def version_key(versions: Mapping[str, int]) -> str:
    return ",".join(f"{name}={version}" for name, version in sorted(versions.items()))


#: The ``data.root`` the version keys are computed with. ``results_versions`` adds the synthetic
#: generator's version ("synthetic data") to a config without a root, but the fingerprints run
#: on a wav set of their own (:func:`write_dataset`), not on ``datamodules.synthetic``: a
#: ``GENERATOR_VERSION`` bump must not ask to re-record numbers it cannot change. (Only the
#: root's presence counts; this is a marker, not a path.)
WAV_SET = "tests/fingerprints.py:write_dataset"


def run_versions(*models: Mapping[str, Any]) -> dict[str, int]:
    """The results versions in the hashes of runs on :data:`WAV_SET` whose model configs are
    ``models`` (no model: the data module's alone), merged."""
    versions: dict[str, int] = {}
    for model in models or (None,):
        config: dict[str, Any] = {"data": {"root": WAV_SET}}
        if model:
            config["model"] = model
        versions.update(results_versions(config))
    return dict(sorted(versions.items()))


# --------------------------------------------------------------------------------------------
# Determinism and the shared tiny data set
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """One intra-op thread, deterministic algorithms, seeds, quiet Lightning; every global
    (thread count, RNG states, the seed Lightning exports, log levels) is restored after."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    env = {
        key: os.environ.get(key) for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "TQDM_DISABLE")
    }
    loggers = {name: logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")}
    levels = {name: log.level for name, log in loggers.items()}
    limiter: Any = contextlib.nullcontext()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=1)  # numpy/scipy BLAS (museval's least squares)
    try:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ["TQDM_DISABLE"] = "1"
        for log in loggers.values():
            log.setLevel(logging.ERROR)
        with limiter, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name, log in loggers.items():
            log.setLevel(levels[name])


#: The tiny data set: 3 training tracks (one becomes the validation track), 1 test track.
TRACKS = {"train": 3, "test": 1}
FILE_RATE = 44100
DURATION = 4.0
SILENT = (0.9, 2.2)  # seconds of exact digital silence of the vocals (museval's NaN frames)


def _track(split_index: int, track_index: int) -> dict[str, np.ndarray]:
    """Four int16 sources and their exact sum: a sung-like harmonic tone with vibrato and a
    silent stretch, noise-burst drums, a plucked bass and a chord over a faint noise floor
    (broadband everywhere, so museval's projections stay well conditioned)."""
    rng = np.random.default_rng([2024, split_index, track_index])
    n = int(DURATION * FILE_RATE)
    t = np.arange(n) / FILE_RATE
    notes = 220.0 * 2.0 ** (rng.integers(0, 12, size=8) / 12)
    f0 = notes[np.minimum((t / 0.5).astype(int), 7)] * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / FILE_RATE
    vocals = sum(np.sin(h * phase) / h for h in range(1, 7)) + 0.02 * rng.standard_normal(n)
    vocals[(t >= SILENT[0]) & (t < SILENT[1])] = 0.0
    since_beat = t % 0.25  # a hit every quarter second: noise burst and a 60 Hz kick
    drums = rng.standard_normal(n) * np.exp(-30 * since_beat)
    drums = drums + np.sin(2 * np.pi * 60 * t) * np.exp(-12 * since_beat)
    bass_f = 55.0 * 2.0 ** (rng.integers(0, 7, size=4) / 12)
    bass_phase = 2 * np.pi * np.cumsum(bass_f[np.minimum((t / 1.0).astype(int), 3)]) / FILE_RATE
    bass = (np.sin(bass_phase) + 0.3 * np.sin(2 * bass_phase)) * np.exp(-3 * (t % 0.5))
    root = 130.8 * 2.0 ** (rng.integers(0, 5) / 12)
    other = sum(np.sin(2 * np.pi * root * r * t) for r in (1.0, 1.26, 1.5))
    other = other + 0.05 * rng.standard_normal(n)
    audio = {}
    for name, signal, peak in (
        ("vocals", vocals, 0.25),
        ("drums", drums, 0.2),
        ("bass", bass, 0.2),
        ("other", other, 0.15),
    ):
        scaled = signal / np.abs(signal).max() * peak * 32767
        audio[name] = np.round(scaled).astype(np.int16)
    total = sum(a.astype(np.int32) for a in audio.values())
    audio["mixture"] = total.astype(np.int16)  # peaks sum to 0.8: no clipping
    return {name: np.stack([a, a], axis=1) for name, a in audio.items()}


def write_dataset(root: Path) -> Path:
    """The tiny MUSDB18 wav tree at ``root`` (written once; a complete tree is kept)."""
    done = root / ".complete"
    if done.exists():
        return root
    for split_index, (split, count) in enumerate(TRACKS.items()):
        for index in range(count):
            folder = root / split / f"Fingerprint {split} {index}"
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in _track(split_index, index).items():
                sf.write(folder / f"{name}.wav", data, FILE_RATE, subtype="PCM_16", format="WAV")
    done.touch()
    return root


class Workspace:
    """A scratch folder shared by the fingerprints of one process: the data set and its
    decoded cache are made once, every Lightning run gets a folder of its own."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._runs = 0

    @functools.cached_property
    def musdb_root(self) -> Path:
        return write_dataset(self.root / "musdb")

    def data(self, **overrides: Any) -> dict[str, Any]:
        """MUSDBDataModule arguments: 32 kHz, 8 frames, batches of 4, two validation chunks,
        the first 3 s of the test track."""
        return {
            "root": str(self.musdb_root),
            "is_wav": True,
            "rate": 32000,
            "targets": "vocals",
            "context_frames": 8,
            "batch_size": 4,
            "excerpt_seconds": 3.0,
            "valid_chunks_per_track": 2,
            "max_test_tracks": 1,
            "test_max_seconds": 3.0,
            "seed": 0,
            "cache_dir": str(self.root / "cache"),
            **overrides,
        }

    def run_dir(self) -> Path:
        self._runs += 1
        path = self.root / "runs" / str(self._runs)
        path.mkdir(parents=True)
        return path


# --------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def tensor_summary(prefix: str, x: torch.Tensor) -> Numbers:
    """Mean, standard deviation, largest magnitude and three fixed entries of a tensor."""
    flat = x.detach().double().flatten()
    picks = {f"{prefix}.at{i}": flat[i * flat.numel() // 3] for i in range(3)}
    return {
        f"{prefix}.mean": _finite(flat.mean()),
        f"{prefix}.std": _finite(flat.std()),
        f"{prefix}.absmax": _finite(flat.abs().max()),
        **{key: _finite(value) for key, value in picks.items()},
    }


# --------------------------------------------------------------------------------------------
# Networks: seeded init, a seeded input, outputs in training and in eval mode
# --------------------------------------------------------------------------------------------


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_net(config: Mapping[str, Any]) -> nn.Module:
    """A network from ``{"class_path", "init_args"}``; band dicts become ``BandConfig``s."""
    from lightning_modules.nets import BandConfig

    args = dict(config.get("init_args") or {})
    for band in ("low", "high", "full"):
        if isinstance(args.get(band), dict):
            args[band] = BandConfig(**{k: tuple(v) for k, v in args[band].items()})
    return _import(config["class_path"])(**args)


def net_numbers(config: Mapping[str, Any], shape: tuple[int, ...]) -> Numbers:
    torch.manual_seed(0)
    net = build_net(config)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    numbers: Numbers = {"params": float(sum(p.numel() for p in net.parameters()))}
    net.train()  # BatchNorm on batch statistics, and one update of its running statistics
    with torch.no_grad():
        train_out = net(x)
    net.eval()
    with torch.no_grad():
        eval_out = net(x)
    for mode, out in (("train", train_out), ("eval", eval_out)):
        heads = out if isinstance(out, dict) else {"main": out}
        for head, value in sorted(heads.items()):
            numbers.update(tensor_summary(f"{mode}.{head}", value))
    return numbers


# --------------------------------------------------------------------------------------------
# LightningModules: built by the suite's LightningCLI as a run is; validation, the full-track
# test through museval, one training step
# --------------------------------------------------------------------------------------------


def _cli(
    ws: Workspace, model: Mapping[str, Any], data: Mapping[str, Any] | None, seed: int = 0
) -> Any:
    from lightning_modules.cli import make_cli

    model = copy.deepcopy(dict(model))
    model.setdefault("init_args", {})["eval_workers"] = 0  # museval inline
    config = {
        "seed_everything": seed,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "callbacks": [],
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "max_steps": 1,
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(ws.run_dir()),
        },
        "model": model,
        "data": ws.data(**(data or {})),
    }
    return make_cli(config, run=False, save_config_callback=None)


def _metric(metrics: Mapping[str, Any], name: str) -> float | None:
    return _finite(metrics[name]) if name in metrics else None


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: value.detach().double().clone()
        for name, value in model.state_dict().items()
        if value.is_floating_point()
    }


def lightning_numbers(
    ws: Workspace,
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    prepare: Callable[[Any], None] | None = None,
    per_target: bool = False,
) -> Numbers:
    """The seeded, untrained model's ``val/loss`` and ``val/sdr`` on the validation chunks,
    ``test/loss`` and the museval medians of the test track; then one training
    step (models that are not only evaluated): ``train/loss`` of the first batch, the mean
    magnitude of the step and of the state (weights and buffers: BatchNorm statistics, input
    statistics) after it. ``per_target``: also every target's museval medians (models that
    estimate several targets; the thesis's fingerprints keep the numbers they were recorded
    with).

    Validation and test come first: after a step they would not be reproducible across CPUs.
    AdamW moves every weight by about +-lr whatever its gradient's size, so weights whose
    gradient is float rounding noise (theoretically zero) move in a direction that depends on
    the CPU's kernels; the step's own size and the state barely see that, the outputs do."""
    cli = _cli(ws, model, data)
    numbers: Numbers = {}
    if prepare is not None:
        prepare(cli.model)
    if cli.model.trainable:
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        numbers["val/loss"] = _metric(cli.trainer.callback_metrics, "val/loss")
        numbers["val/sdr"] = _metric(cli.trainer.callback_metrics, "val/sdr")
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    if "test/loss" in cli.trainer.callback_metrics:  # the objective on the whole track
        numbers["test/loss"] = _metric(cli.trainer.callback_metrics, "test/loss")
    for metric in ("SDR", "SIR", "SAR", "ISR", "PES", "EPS"):
        numbers[f"test/{metric}"] = _finite(cli.model.test_scores[metric]["median"])
        for target, scores in cli.model.target_scores.items() if per_target else ():
            numbers[f"test/{target}/{metric}"] = _finite(scores[metric]["median"])
    if cli.model.trainable:
        before = _state(cli.model)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        numbers["train/loss"] = _metric(cli.trainer.callback_metrics, "train/loss_step")
        after = _state(cli.model)
        params = {name for name, _ in cli.model.named_parameters()}
        step = torch.cat([(after[n] - before[n]).flatten() for n in sorted(params)])
        numbers["step.absmean"] = _finite(step.abs().mean())
        numbers["state.absmean"] = _finite(
            torch.cat([v.flatten() for v in after.values()]).abs().mean()
        )
    return numbers


class LeakyOracle(Separator):
    """The test protocol of ``Separator`` on a fixed estimate: the true vocals plus ``leak``
    of the accompaniment and a small non-linear artefact of the mixture."""

    trainable = False

    def __init__(
        self,
        leak: float = 0.25,
        rate: int = 32000,
        context_frames: int = 64,
        eval_workers: int = 2,
        stft: STFTConfig | None = None,
        channels: int = 1,
        targets: str | list[str] = "vocals",
    ) -> None:
        super().__init__(
            rate=rate,
            context_frames=context_frames,
            eval_workers=eval_workers,
            stft=stft,
            channels=channels,
            targets=targets,
        )
        self.save_hyperparameters()
        self.leak = leak

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        assert targets is not None
        vocals, accompaniment = self.vocals_pair(mixture, targets)
        return vocals + self.leak * accompaniment + 0.01 * torch.tanh(5 * mixture)

    def configure_optimizers(self) -> None:
        return None


def _save_checkpoint(model: Any, path: Path) -> Path:
    """A checkpoint as the suite's LightningCLI writes it (class path and net config in the
    hyper-parameters), as ``lightning_modules.separate.load_separator`` reads it."""
    import lightning

    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def wiener_numbers(ws: Workspace, members: Mapping[str, dict], model: dict) -> Numbers:
    """Two untrained baselines (seeds 1 and 2) saved as checkpoints, combined and tested."""
    model = copy.deepcopy(model)
    for seed, (target, config) in enumerate(members.items(), start=1):
        member = _cli(ws, config, None, seed=seed).model
        path = _save_checkpoint(member, ws.root / f"wiener-{target}-{ws.run_dir().name}.ckpt")
        model["init_args"][target] = str(path)
    return lightning_numbers(ws, model)


# --------------------------------------------------------------------------------------------
# The data module: a seeded training batch, the validation chunks, the test track
# --------------------------------------------------------------------------------------------


def datamodule_numbers(ws: Workspace, **overrides: Any) -> Numbers:
    from datamodules.musdb_datamodule import MUSDBDataModule

    dm = MUSDBDataModule(**ws.data(**overrides))
    dm.prepare_data()
    dm.setup("fit")
    numbers: Numbers = {
        f"split.{name}.samples": float(split.lengths.sum()) for name, split in dm.splits.items()
    }
    for index, batch in enumerate(itertools.islice(dm.train_dataloader(), 2)):
        numbers.update(tensor_summary(f"train{index}.mixture", batch["mixture"]))
        for i, target in enumerate(dm.target_names):
            numbers[f"train{index}.{target}.std"] = _finite(batch["targets"][:, i].std())
    valid = dm.validation_chunks()
    numbers["valid.chunks"] = float(valid["mixture"].shape[0])
    numbers.update(tensor_summary("valid.mixture", valid["mixture"]))
    numbers["valid.vocals.std"] = _finite(valid["targets"][:, 0].std())
    test = next(iter(dm.test_dataloader()))
    numbers["test.samples"] = float(test["mixture"].shape[-1])
    numbers.update(tensor_summary("test.mixture", test["mixture"]))
    for i, target in enumerate(dm.target_names):
        numbers[f"test.{target}.std"] = _finite(test["targets"][i].std())
    return numbers


# --------------------------------------------------------------------------------------------
# The fingerprints (model arguments as in experiments/, pinned here: editing an experiment
# file changes its runs' hashes by itself and must not change a fingerprint)
# --------------------------------------------------------------------------------------------

NETS = "lightning_modules.nets"
MODULES = "lightning_modules"
MEL_FULL = {"growth_rates": [18] * 7, "layers": [4] * 7}

BASELINE_NET = {"class_path": f"{NETS}.MMDenseNet", "init_args": {"input_kernel_size": 3}}
BASELINE = {  # experiments/mmdensenet/baseline.yaml
    "class_path": f"{MODULES}.SpectrogramSeparator",
    "init_args": {
        "net": BASELINE_NET,
        "target": "vocals",
        "lr": 0.002,
        "eps": 1.0e-6,
        "weight_decay": 1.0e-5,
        "plateau_factor": 0.1,
    },
}
MEL_MMDENSENET = {  # experiments/mmdensenet/mel_mmdensenet.yaml
    "class_path": f"{MODULES}.SpectrogramSeparator",
    "init_args": {
        "net": {"class_path": f"{NETS}.MMDenseNet", "init_args": {"output_activation": "sigmoid"}},
        "objective": "mask",
        "mask": "wf",
        "mel_bins": 128,
    },
}
LOG_SCALES = {  # Table 4.4: log input and output, no output function
    "class_path": f"{MODULES}.SpectrogramSeparator",
    "init_args": {
        "net": {"class_path": f"{NETS}.MMDenseNet", "init_args": {"output_activation": "none"}},
        "input_scale": "log",
        "output_scale": "log",
    },
}
NORMALIZED = {  # Table 4.5: mean-variance normalisation of the input
    "class_path": f"{MODULES}.SpectrogramSeparator",
    "init_args": {"net": BASELINE_NET, "normalize_input": True},
}
TPS_MASK = {  # Table 4.6: TPS-mask approximation, sigmoid output
    "class_path": f"{MODULES}.SpectrogramSeparator",
    "init_args": {
        "net": {"class_path": f"{NETS}.MMDenseNet", "init_args": {"output_activation": "sigmoid"}},
        "objective": "mask",
        "mask": "tps",
    },
}
MULTITASK = {  # experiments/mmdensenet/multitask.yaml
    "class_path": f"{MODULES}.MultiTaskSeparator",
    "init_args": {
        "net": {
            "class_path": f"{NETS}.MultiHeadMMDenseNet",
            "init_args": {"output_activation": "relu", "second_head": "out_block"},
        },
        "joint_mask": False,
        "objective": "spectrogram",
    },
}
MULTITASK_JOINT = {  # Table 4.7: decoder split, joint mask computation
    "class_path": f"{MODULES}.MultiTaskSeparator",
    "init_args": {
        "net": {
            "class_path": f"{NETS}.MultiHeadMMDenseNet",
            "init_args": {"output_activation": "relu", "second_head": "decoder"},
        },
        "joint_mask": True,
    },
}
CHIMERA = {  # experiments/mmdensenet/chimera.yaml
    "class_path": f"{MODULES}.ChimeraSeparator",
    "init_args": {
        "net": {
            "class_path": f"{NETS}.MultiHeadMMDenseNet",
            "init_args": {
                "output_activation": "relu",
                "embedding_split": "pre_block",
                "embedding_dim": 20,
            },
        },
        "alpha": 0.2,
        "clustering": "deep_clustering",
        "objective": "spectrogram",
    },
}
CHIMERA_ATTRACTOR = copy.deepcopy(CHIMERA)  # Table 4.13: SA, attractor loss, alpha 0.2
CHIMERA_ATTRACTOR["init_args"]["clustering"] = "attractor"
FINAL_NET = {  # experiments/mmdensenet/mel_mdensenet_dc_nodsconvs_bc.yaml
    "class_path": f"{NETS}.MultiHeadMMDenseNet",
    "init_args": {
        "output_activation": "sigmoid",
        "embedding_split": "pre_block",
        "embedding_dim": 20,
        "low": None,
        "high": None,
        "full": MEL_FULL,
        "downsample_conv": False,
        "bottleneck_compression": True,
    },
}
FINAL = {
    "class_path": f"{MODULES}.ChimeraSeparator",
    "init_args": {
        "net": FINAL_NET,
        "alpha": 0.5,
        "clustering": "deep_clustering",
        "objective": "mask",
        "mask": "wf",
        "mel_bins": 128,
    },
}
FINAL_PSP = copy.deepcopy(FINAL)  # Table 5.9: + PSP, epsilon = 0.18
FINAL_PSP["init_args"]["pruning"] = {"threshold": 0.18}
WIENER = {  # experiments/mmdensenet/two_model_wiener.yaml
    "class_path": f"{MODULES}.WienerCombination",
    "init_args": {"vocals": "<checkpoint>", "accompaniment": "<checkpoint>", "alpha": 2.0},
}
WIENER_MEMBERS = {
    "vocals": BASELINE,
    "accompaniment": {
        **BASELINE,
        "init_args": {**BASELINE["init_args"], "target": "accompaniment"},
    },
}
ORACLE = {  # experiments/oracle/wiener.yaml (linear) and Table 5.3's Mel rows
    "class_path": f"{MODULES}.OracleMaskSeparator",
    "init_args": {"mel_bins": None, "alpha": 2.0},
}
ORACLE_MEL = {**ORACLE, "init_args": {"mel_bins": 128, "alpha": 2.0}}

#: Issue #11: four targets in stereo at 44.1 kHz, STFT 4096 / 1024 Hamming with the DC bin
#: (experiments/frontend/stereo_4targets_44k.yaml at 4 frames of context).
STEREO_4TARGETS_DATA = {
    "rate": 44100,
    "channels": 2,
    "targets": "all",
    "stft": {"n_fft": 4096, "hop": 1024, "window": "hamming", "keep_dc": True},
    "context_frames": 4,
    "test_max_seconds": 2.0,
}
STEREO_4TARGETS = {
    "class_path": f"{MODULES}.SpectrogramSeparator",
    "init_args": {
        "net": {
            "class_path": f"{NETS}.MMDenseNet",
            "init_args": {"in_channels": 2, "out_channels": 8, "output_activation": "relu"},
        },
        "multi_target": True,
        "objective": "learned_mask",
    },
}
ORACLE_IRM = {"class_path": f"{MODULES}.OracleMaskSeparator", "init_args": {"mask": "irm"}}
LEAKY_ORACLE = {"class_path": "tests.fingerprints.LeakyOracle", "init_args": {"leak": 0.25}}
#: Issue #13: Sams-Net, small (8 maps, 33 bins, 2 modules), 3 slices of 13 frames (5, 4, 4).
SAMSNET_SMALL = {
    "class_path": f"{NETS}.samsnet.SamsNet",
    "init_args": {"bins": 33, "channels": 8, "attention_modules": 2, "slices": 3},
}

#: Issue #16: the BLSTM chimera network for music (experiments/chimera_blstm/base.yaml, shrunk:
#: 20 Mel bins + deltas, 2 layers of 8 units, D = 4) on 0 dB remixes at 16 kHz, 512 / 128.
BLSTM_NET = {
    "class_path": f"{NETS}.blstm.BLSTMChimeraNet",
    "init_args": {"n_inputs": 40, "n_mels": 20, "hidden": 8, "layers": 2, "embedding_dim": 4},
}
BLSTM_DATA = {
    "rate": 16000,
    "mixing": "remix_0db",
    "stft": {"n_fft": 512, "hop": 128},
    "context_frames": 16,
}
BLSTM_CHIMERA = {  # alpha 0.5, MSA, scored by K-means on the embeddings
    "class_path": f"{MODULES}.separators.blstm_chimera.BLSTMChimeraSeparator",
    "init_args": {"net": BLSTM_NET, "alpha": 0.5, "mel_bins": 20, "test_head": "dc"},
}
BLSTM_CHIMERA_MMSA = copy.deepcopy(BLSTM_CHIMERA)  # mMSA, scored on the mask head
BLSTM_CHIMERA_MMSA["init_args"].update(mi_loss="mmsa", test_head="mi")

#: Issue #15: the DAE paper's per-frame models at 65 bins (128 / 32, Hamming 65, DC kept) on
#: the tracks' own mixtures, one frame per example; the NCA at 3 iterations on 0.5 s.
DAE_NETS = {
    name: {"class_path": f"{NETS}.dae.{name}", "init_args": {"bins": 65}}
    for name in ("DAE", "MSSDAE", "SkipFilteringDAE")
}
DAE_DATA = {
    "mixing": "coherent",
    "stft": {"n_fft": 128, "hop": 32, "win_length": 65, "window": "hamming", "keep_dc": True},
    "context_frames": 1,
}
DAE_SF = {
    "class_path": f"{MODULES}.separators.dae.DAESeparator",
    "init_args": {
        "net": DAE_NETS["SkipFilteringDAE"],
        "test_context_frames": 64,
        "nca_iterations": 3,
        "nca_max_segments": 1,
        "nca_segment_seconds": 0.5,
    },
}
#: Issue #14: the weakly informed model (8 units per LSTM direction) with A3's side information
#: (activity, runs shortened, padded to 300), and the oracle-magnitude row, at 1024 / 512 Hamming.
WEAKLY_DATA = {
    "rate": 16000,
    "mixing": "coherent",
    "stft": {"n_fft": 1024, "hop": 512, "window": "hamming", "keep_dc": True},
    "context_frames": 8,
}
WEAKLY_A3 = {
    "class_path": f"{MODULES}.separators.weakly_informed.WeaklyInformedSeparator",
    "init_args": {
        "net": {
            "class_path": f"{NETS}.weakly_informed.WeaklyInformedNet",
            "init_args": {"hidden": 8},
        },
        "side_info": {"kind": "activity", "pad_to": 300, "shorten": [0, 1]},
    },
}
WEAKLY_ORACLE = {"class_path": f"{MODULES}.separators.weakly_informed.OracleMagnitudeSeparator"}
#: Issue #12: MagNet + PhaseNet (experiments/mmdensenet/magnet_phasenet.yaml): both networks on
#: L_tot, and the PhaseNet's pre-training (MagNet frozen, zeros for the log ratio).
MAGPHASE_NET = {
    "class_path": f"{NETS}.phasenet.MagPhaseNet",
    "init_args": {
        "magnet": {
            "class_path": f"{NETS}.MMDenseNet",
            "init_args": {"out_channels": 3, "output_activation": "none"},
        },
        "phasenet": {"class_path": f"{NETS}.phasenet.PhaseNet"},
    },
}
MAGPHASE_TOTAL = {
    "class_path": f"{MODULES}.separators.phase.MagPhaseSeparator",
    "init_args": {"net": MAGPHASE_NET, "loss": "total"},
}
MAGPHASE_PRETRAINING = copy.deepcopy(MAGPHASE_TOTAL)
MAGPHASE_PRETRAINING["init_args"]["loss"] = "phase"
MAGPHASE_PRETRAINING["init_args"]["net"]["init_args"]["magnitude_to_phase"] = False


def magphase_net_numbers(config: Mapping[str, Any]) -> Numbers:
    """MagNet + PhaseNet on a seeded magnitude (2, 1, 1024, 8) and features (2, 2, 1024, 8),
    in train and eval mode: the mask and the phase logits."""
    from lightning_modules.inference.stats import net_from_config

    torch.manual_seed(0)
    net = net_from_config(dict(config))
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 1024, 8, generator=generator)
    features = torch.rand(2, 2, 1024, 8, generator=generator) * 2 - 1
    numbers: Numbers = {"params": float(sum(p.numel() for p in net.parameters()))}
    for mode in ("train", "eval"):
        net.train(mode == "train")
        with torch.no_grad():
            out = net(x, features)
        for head, value in sorted(out.items()):
            numbers.update(tensor_summary(f"{mode}.{head}", value))
    return numbers


def phasenet_numbers(config: Mapping[str, Any]) -> Numbers:
    """The PhaseNet alone on seeded features (2, 2, 1024, 8) and log ratio (2, 1, 1024, 8)."""
    torch.manual_seed(0)
    net = build_net(config)
    generator = torch.Generator().manual_seed(1)
    features = torch.rand(2, 2, 1024, 8, generator=generator) * 2 - 1
    log_ratio = torch.log(torch.rand(2, 1, 1024, 8, generator=generator) * 2 + 1e-6)
    numbers: Numbers = {"params": float(sum(p.numel() for p in net.parameters()))}
    for mode in ("train", "eval"):
        net.train(mode == "train")
        with torch.no_grad():
            numbers.update(tensor_summary(f"{mode}.main", net(features, log_ratio)))
    return numbers


def weakly_net_numbers(config: Mapping[str, Any]) -> Numbers:
    """The weakly informed network on a seeded mixture magnitude (2, 513, 8) and side
    information (2, 1, 12): its estimate and attention weights."""
    torch.manual_seed(0)
    net = build_net(config).eval()
    generator = torch.Generator().manual_seed(1)
    x, side = torch.rand(2, 513, 8, generator=generator), torch.rand(2, 1, 12, generator=generator)
    with torch.no_grad():
        estimate, alpha = net(x, side)
    numbers: Numbers = {"params": float(sum(p.numel() for p in net.parameters()))}
    return {**numbers, **tensor_summary("main", estimate), **tensor_summary("alpha", alpha)}


MDENSENET_LOW = {  # the low band of the baseline MMDenseNet (thesis Table 3.1)
    "class_path": f"{NETS}.MDenseNet",
    "init_args": {"in_channels": 1, "growth_rates": [14] + [16] * 6, "layers": [4] * 7},
}
MMDENSENET_MEL_BC = {  # the final model's network without its embedding head
    "class_path": f"{NETS}.MMDenseNet",
    "init_args": {k: v for k, v in FINAL_NET["init_args"].items() if "embedding" not in k},
}
MULTIHEAD_DECODER = MULTITASK_JOINT["init_args"]["net"]
_MB_BANDS = [
    {"low_hz": 0, "high_hz": 4000, "growth_rate": 3},
    {"low_hz": 4000, "high_hz": 16000, "growth_rate": 2},
]
MULTIBAND_SMALL = {  # both kinds of multi-band block (thesis 4.4.2) with overlaps, at toy size
    "class_path": f"{NETS}.multiband.MultiBandDenseNet",
    "init_args": {
        "scales": [
            {
                "bands": [{**b, "input_kernels": 4} for b in _MB_BANDS],
                "full_growth_rate": 2,
                "full_input_kernels": 4,
                "layers": 2,
                "overlap": 0.1,
                "shared_internal": 2,
                "shared_output": 3,
                "forced_output": 4,
            },
            {
                "bands": [{**b, "layers": 2} for b in _MB_BANDS],
                "full_growth_rate": 2,
                "full_layers": 1,
                "overlap": 0.1,
                "shared_input": 2,
                "shared_output": 2,
            },
            {"bands": [], "full_growth_rate": 3, "layers": 2},
        ],
        "final_growth_rate": 3,
        "final_layers": 1,
    },
}
MBC_SMALL = {  # multi-band channels (thesis 4.4.1) at toy size
    "class_path": f"{NETS}.multiband.BandChannelDenseNet",
    "init_args": {
        "cutoff_bin": 32,
        "first_channels": 8,
        "growth_rate": 4,
        "layers": 2,
        "kernels_per_band": 4,
    },
}


def _set_final_threshold(model: Any) -> None:
    """A PSP model is evaluated at its final threshold (as after the ramp) and trains on."""
    from lightning_modules.nets.pruning import set_threshold

    set_threshold(model.net, model.pruning.threshold)


def _net(name: str, config: dict, shape: tuple[int, ...]) -> Fingerprint:
    return Fingerprint(name, (config,), lambda ws: net_numbers(config, shape))


def _model(name: str, config: dict, **kwargs: Any) -> Fingerprint:
    return Fingerprint(name, (config,), lambda ws: lightning_numbers(ws, config, **kwargs))


FINGERPRINTS: tuple[Fingerprint, ...] = (
    Fingerprint("MUSDBDataModule/vocals", (), datamodule_numbers),
    Fingerprint(
        "MUSDBDataModule/overfit_all_targets",
        (),
        lambda ws: datamodule_numbers(
            ws, targets="all", overfit={"seconds": 1.0, "shift": 0.5}, seed=3
        ),
    ),
    _net("MDenseNet/low_band", MDENSENET_LOW, (2, 1, 512, 8)),
    _net("MMDenseNet/baseline", BASELINE_NET, (2, 1, 1024, 8)),
    _net("MMDenseNet/mel_nodsconvs_bc", MMDENSENET_MEL_BC, (2, 1, 128, 8)),
    _net("MultiHeadMMDenseNet/chimera", CHIMERA["init_args"]["net"], (2, 1, 1024, 8)),
    _net("MultiHeadMMDenseNet/decoder_head", MULTIHEAD_DECODER, (2, 1, 1024, 8)),
    _net("MultiHeadMMDenseNet/final", FINAL_NET, (2, 1, 128, 8)),
    _net("SamsNet/small_3_slices", SAMSNET_SMALL, (2, 2, 33, 13)),
    _net("MultiBandDenseNet/small", MULTIBAND_SMALL, (2, 1, 64, 8)),
    _net("BandChannelDenseNet/small", MBC_SMALL, (2, 1, 64, 8)),
    _model("Separator/test_protocol", LEAKY_ORACLE),
    _model("SpectrogramSeparator/baseline", BASELINE),
    _model("SpectrogramSeparator/mel_wf_mask", MEL_MMDENSENET),
    _model("SpectrogramSeparator/tps_mask", TPS_MASK),
    _model("SpectrogramSeparator/log_scales", LOG_SCALES),
    _model("SpectrogramSeparator/normalized", NORMALIZED),
    _model("MultiTaskSeparator/out_block", MULTITASK),
    _model("MultiTaskSeparator/decoder_joint_mask", MULTITASK_JOINT),
    _model("ChimeraSeparator/deep_clustering", CHIMERA),
    _model("ChimeraSeparator/attractor", CHIMERA_ATTRACTOR),
    _model("ChimeraSeparator/final", FINAL),
    _model("ChimeraSeparator/final_psp", FINAL_PSP, prepare=_set_final_threshold),
    Fingerprint(
        "WienerCombination/two_baselines",
        (WIENER, *WIENER_MEMBERS.values()),
        lambda ws: wiener_numbers(ws, WIENER_MEMBERS, WIENER),
    ),
    _model("OracleMaskSeparator/linear", ORACLE),
    _model("OracleMaskSeparator/mel", ORACLE_MEL),
    Fingerprint(
        "MUSDBDataModule/stereo_4targets_hamming_dc",
        (),
        lambda ws: datamodule_numbers(ws, **STEREO_4TARGETS_DATA),
    ),
    Fingerprint(
        "MUSDBDataModule/coherent_source_list",
        (),
        lambda ws: datamodule_numbers(ws, mixing="coherent", targets=["vocals", "bass"]),
    ),
    Fingerprint(
        "MUSDBDataModule/remix_0db",
        (),
        lambda ws: datamodule_numbers(ws, mixing="remix_0db", seed=5),
    ),
    _model(
        "SpectrogramSeparator/stereo_4targets_hamming_dc",
        STEREO_4TARGETS,
        data=STEREO_4TARGETS_DATA,
        per_target=True,
    ),
    _model(
        "OracleMaskSeparator/irm_stereo_4targets",
        ORACLE_IRM,
        data=STEREO_4TARGETS_DATA,
        per_target=True,
    ),
    _net("BLSTMChimeraNet/small", BLSTM_NET, (2, 40, 16)),
    _model("BLSTMChimeraSeparator/chi_msa_dc", BLSTM_CHIMERA, data=BLSTM_DATA, per_target=True),
    _model("BLSTMChimeraSeparator/mmsa_mi", BLSTM_CHIMERA_MMSA, data=BLSTM_DATA, per_target=True),
    *(_net(f"{name}/65_bins", config, (2, 1, 65, 4)) for name, config in DAE_NETS.items()),
    _model("DAESeparator/sf_small", DAE_SF, data=DAE_DATA),
    Fingerprint(
        "WeaklyInformedNet/small",
        (WEAKLY_A3["init_args"]["net"],),
        lambda ws: weakly_net_numbers(WEAKLY_A3["init_args"]["net"]),
    ),
    _model("WeaklyInformedSeparator/a3_small", WEAKLY_A3, data=WEAKLY_DATA),
    _model("OracleMagnitudeSeparator/vocals", WEAKLY_ORACLE, data=WEAKLY_DATA),
    Fingerprint("MagPhaseNet/both", (MAGPHASE_NET,), lambda ws: magphase_net_numbers(MAGPHASE_NET)),
    Fingerprint(
        "PhaseNet/default",
        (MAGPHASE_NET["init_args"]["phasenet"],),
        lambda ws: phasenet_numbers(MAGPHASE_NET["init_args"]["phasenet"]),
    ),
    _model("MagPhaseSeparator/total", MAGPHASE_TOTAL),
    _model("MagPhaseSeparator/phase_pretraining", MAGPHASE_PRETRAINING),
)
BY_NAME: dict[str, Fingerprint] = {fp.name: fp for fp in FINGERPRINTS}


def compute(fingerprint: Fingerprint, workspace: Workspace) -> Numbers:
    """The fingerprint's numbers, computed deterministically on one thread."""
    with deterministic():
        return dict(sorted(fingerprint.compute(workspace).items()))


# --------------------------------------------------------------------------------------------
# Comparing and recording
# --------------------------------------------------------------------------------------------


def tolerance(number: str) -> tuple[float, float]:
    """(relative, absolute) tolerance of a number, by its name."""
    if any(metric in number for metric in DB_METRICS):
        return 0.0, ATOL_DB
    return RTOL, ATOL


def differences(recorded: Mapping[str, Any], computed: Mapping[str, Any]) -> list[str]:
    """What differs between two sets of numbers, one line each (empty: they match)."""
    lines = []
    for number in sorted(set(recorded) | set(computed)):
        if number not in computed:
            lines.append(f"{number}: recorded {recorded[number]!r}, no longer computed")
        elif number not in recorded:
            lines.append(f"{number}: new number {computed[number]!r}")
        else:
            old, new = recorded[number], computed[number]
            rtol, atol = tolerance(number)
            same = (old is None and new is None) or (
                old is not None
                and new is not None
                and math.isclose(old, new, rel_tol=rtol, abs_tol=atol)
            )
            if not same:
                lines.append(f"{number}: recorded {old!r}, now {new!r}")
    return lines


def changed_message(fingerprint: Fingerprint, diffs: list[str]) -> str:
    return (
        f"results of {fingerprint.name} changed while its results versions "
        f"{fingerprint.key} did not: bump `results_version` of the class you changed "
        "(sweeps/identity.py), then `python -m tests.fingerprints record`. Only the classes "
        "listed enter these runs' hashes: if you changed another class that they use, bump "
        "the listed class that uses it.\n  " + "\n  ".join(diffs)
    )


def missing_message(fingerprint: Fingerprint) -> str:
    return (
        f"no fingerprint of {fingerprint.name} is recorded for results versions "
        f"{fingerprint.key}: run the recorder after bumping a results_version "
        "(`python -m tests.fingerprints record`) and commit tests/results_fingerprints.json"
    )


def load_store(path: Path = STORE) -> dict[str, dict[str, Numbers]]:
    return json.loads(path.read_text()) if path.exists() else {}


def save_store(store: Mapping[str, Any], path: Path = STORE) -> None:
    """Written atomically, keys sorted (stable diffs of an append-only file)."""
    write_atomic(path, json.dumps(store, indent=1, sort_keys=True) + "\n")


def committed_store(path: Path = STORE) -> dict[str, dict[str, Numbers]]:
    """The store as committed at git HEAD (empty when it is not committed, or no git)."""
    try:
        relative = path.resolve().relative_to(REPO)
        shown = subprocess.run(
            ["git", "show", f"HEAD:{relative.as_posix()}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
    except (ValueError, OSError):
        return {}
    return json.loads(shown.stdout) if shown.returncode == 0 else {}


@dataclass
class Outcome:
    added: list[str]
    replaced: list[str]
    unchanged: list[str]
    changed: dict[str, list[str]]  # name -> differences, under an unchanged recorded key


def merge(
    store: dict[str, dict[str, Numbers]],
    computed: Mapping[str, tuple[str, Numbers]],
    replaceable: Callable[[str, str], bool] = lambda name, key: False,
) -> Outcome:
    """Add ``computed`` ({name: (key, numbers)}) to ``store`` in place: new keys are added,
    a recorded entry is only replaced where ``replaceable(name, key)``, never otherwise."""
    outcome = Outcome([], [], [], {})
    for name, (key, numbers) in computed.items():
        entries = store.setdefault(name, {})
        if key not in entries:
            entries[key] = numbers
            outcome.added.append(name)
            continue
        diffs = differences(entries[key], numbers)
        if not diffs:
            outcome.unchanged.append(name)
        elif replaceable(name, key):
            entries[key] = numbers
            outcome.replaced.append(name)
        else:
            outcome.changed[name] = diffs
    return outcome


# --------------------------------------------------------------------------------------------
# Pinned defaults: a run's hash leaves out the values equal to their class's default
# --------------------------------------------------------------------------------------------

#: The suite's packages searched for versioned classes.
PACKAGES = (
    "lightning_modules",
    "lightning_modules.nets",
    "lightning_modules.dsp",
    "lightning_modules.evaluation",
    "lightning_modules.separators",
    "lightning_modules.inference",
    "datamodules",
)
#: Classes of other libraries whose defaults enter every run's identity: the Trainer (a Lightning
#: upgrade may change its defaults), and the callbacks the experiments name that are hashed (not
#: ``identity.RUNTIME_CALLBACKS``). ``tests/test_results_version.py`` fails on a class path in
#: experiments/ that is neither the suite's, nor here, nor runtime-only.
LIBRARY_CLASSES = (
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.EarlyStopping",  # experiments/samsnet/samsnet.yaml
)


def _modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.iter_modules(root.__path__, prefix=f"{package}."):
        if not info.ispkg and not info.name.endswith("__main__"):
            names.append(info.name)
    return names


@functools.cache
def suite_classes() -> tuple[type, ...]:
    """Every class defined in the suite's model, network and data packages."""
    classes = {}
    for package in PACKAGES:
        for name in _modules(package):
            module = importlib.import_module(name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == name:
                    classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return tuple(classes.values())


def versioned_classes() -> tuple[type, ...]:
    """The suite's classes that define a ``results_version`` of their own."""
    return tuple(cls for cls in suite_classes() if "results_version" in vars(cls))


def class_config(cls: type) -> dict[str, str]:
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}"}


@dataclass(frozen=True)
class Pinned:
    """A class whose constructor defaults are pinned. ``bump`` is the versioned class whose
    ``results_version`` a changed default must bump: the class itself, or for a library class
    ``Separator``, the base of every run's model, so that its version is in every run's hash."""

    cls: type
    bump: type

    @property
    def name(self) -> str:
        return self.cls.__qualname__

    @property
    def key(self) -> str:
        """The versions in the hash of a run whose config names ``bump`` (with its bases and
        components, and the data module every run has)."""
        return version_key(run_versions(class_config(self.bump)))

    def defaults(self) -> dict[str, Any]:
        return pinned_defaults(self.cls)


def pinned_classes() -> tuple[Pinned, ...]:
    """Every versioned class of the suite (``MUSDBDataModule`` among them) and
    :data:`LIBRARY_CLASSES`, by name."""
    pins = [Pinned(cls, cls) for cls in versioned_classes()]
    pins += [Pinned(_import(path), Separator) for path in LIBRARY_CLASSES]
    return tuple(sorted(pins, key=lambda pin: pin.name))


@functools.cache
def _runtime_only(cls: type) -> set[str]:
    """Parameters of ``cls`` that ``identity.RUNTIME_ONLY`` drops from every run's identity:
    their defaults do not matter."""
    from lightning.pytorch import Trainer

    if issubclass(cls, Trainer):
        section = "trainer."
    elif issubclass(cls, L.LightningDataModule):
        section = "data."
    elif issubclass(cls, L.LightningModule):
        section = "model.init_args."
    else:
        return set()
    names = (key.removeprefix(section) for key in identity.RUNTIME_ONLY if key.startswith(section))
    return {name for name in names if "." not in name}


def pinned_defaults(cls: type) -> dict[str, Any]:
    """What ``sweeps.identity`` compares a run's values with, ``identity.class_defaults(cls)``,
    for every hashed parameter, None defaults included (a None default becoming a value is a
    change too)."""
    runtime = _runtime_only(cls)
    defaults = identity.class_defaults(cls)
    return {name: value for name, value in sorted(defaults.items()) if name not in runtime}


#: A recorded parameter the class no longer has.
GONE = "(no such parameter any more)"


def default_changes(pin: Pinned, recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """One message per recorded default that changed or disappeared (new parameters are fine:
    no finished run had them, so they change no old run's identity)."""
    return [
        default_changed_message(pin, param, old, now[param] if param in now else GONE)
        for param, old in sorted(recorded.items())
        if param not in now or now[param] != old
    ]


def default_changed_message(pin: Pinned, param: str, old: Any, new: Any) -> str:
    bump = pin.bump.__qualname__
    why = "" if pin.bump is pin.cls else " (every run's hash holds it)"
    return (
        f"the default of {pin.name}.{param} changed from {old!r} to "
        f"{new if new is GONE else repr(new)} while its results versions {pin.key} did not: a "
        "run's hash leaves defaults out, so the old runs would be taken for new ones; bump "
        f"results_version of {bump}{why} (sweeps/identity.py) and record "
        "(`python -m tests.fingerprints record`)"
    )


def missing_defaults_message(pin: Pinned) -> str:
    return (
        f"no defaults of {pin.name} are recorded for results versions {pin.key}: run the "
        "recorder after bumping a results_version (`python -m tests.fingerprints record`) and "
        "commit tests/results_defaults.json"
    )


@dataclass
class DefaultsOutcome:
    added: list[str]
    extended: dict[str, list[str]]  # name -> parameters recorded under its recorded key
    replaced: list[str]
    unchanged: list[str]
    changed: dict[str, list[str]]  # name -> messages


def merge_defaults(
    store: dict[str, dict[str, dict[str, Any]]],
    pins: tuple[Pinned, ...] | list[Pinned],
    replaceable: Callable[[str, str], bool] = lambda name, key: False,
) -> DefaultsOutcome:
    """Add the current defaults of ``pins`` to ``store`` in place: a new key gets them all, a
    recorded key its new parameters; a recorded default is only replaced (with the whole entry)
    where ``replaceable(name, key)``, never otherwise."""
    outcome = DefaultsOutcome([], {}, [], [], {})
    for pin in pins:
        key, now = pin.key, pin.defaults()
        entries = store.setdefault(pin.name, {})
        if key not in entries:
            entries[key] = now
            outcome.added.append(pin.name)
            continue
        changes = default_changes(pin, entries[key], now)
        if changes and replaceable(pin.name, key):
            entries[key] = now
            outcome.replaced.append(pin.name)
        elif changes:
            outcome.changed[pin.name] = changes
        elif new := sorted(set(now) - set(entries[key])):
            entries[key] = dict(sorted({**entries[key], **now}.items()))
            outcome.extended[pin.name] = new
        else:
            outcome.unchanged.append(pin.name)
    return outcome


def _select(names: list[str] | None) -> tuple[list[Fingerprint], list[Pinned]]:
    """The fingerprints and pinned classes named (none named: all of them)."""
    pins = {pin.name: pin for pin in pinned_classes()}
    if not names:
        return list(FINGERPRINTS), list(pins.values())
    unknown = [name for name in names if name not in BY_NAME and name not in pins]
    if unknown:
        raise SystemExit(
            f"unknown names {unknown}; fingerprints: {sorted(BY_NAME)}; "
            f"pinned defaults: {sorted(pins)}"
        )
    return [BY_NAME[n] for n in names if n in BY_NAME], [pins[n] for n in names if n in pins]


def compute_all(fingerprints: list[Fingerprint]) -> dict[str, tuple[str, Numbers]]:
    with tempfile.TemporaryDirectory(prefix="fingerprints-") as folder:
        workspace = Workspace(folder)
        results = {}
        for fp in fingerprints:
            print(f"computing {fp.name}", flush=True)
            chatter = io.StringIO()  # progress bars of decoding and museval
            try:
                with contextlib.redirect_stderr(chatter):
                    results[fp.name] = (fp.key, compute(fp, workspace))
            except BaseException:
                sys.stderr.write(chatter.getvalue())
                raise
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fingerprints",
        description="Record or check the results fingerprints (tests/results_fingerprints.json) "
        "and the pinned defaults (tests/results_defaults.json).",
    )
    parser.add_argument("command", choices=("record", "check", "list"))
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="these fingerprints or pinned classes only"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="record: also replace entries that are not in the committed store (git HEAD)",
    )
    parser.add_argument(
        "--reset",
        nargs="+",
        metavar="NAME",
        default=[],
        help='record: replace the entries of these fingerprints or pinned classes (or "all") '
        "for their current keys, committed or not: only for entries no finished run depends on",
    )
    parser.add_argument("--store", type=Path, default=STORE, help=argparse.SUPPRESS)
    parser.add_argument(
        "--defaults-store", type=Path, default=DEFAULTS_STORE, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    fingerprints, pins = _select(args.only)
    if args.command == "list":
        for fp in fingerprints:
            print(f"{fp.name}  [{fp.key}]")
        for pin in pins:
            print(f"defaults of {pin.name}  [{pin.key}]")
        return 0
    every = [fp.name for fp in FINGERPRINTS] + [pin.name for pin in pinned_classes()]
    reset = set(every) if "all" in args.reset else set(args.reset)
    _select(sorted(reset))  # unknown names are an error
    record = args.command == "record"

    def replaceable_in(committed: Mapping[str, Mapping[str, Any]]) -> Callable[[str, str], bool]:
        def replaceable(name: str, key: str) -> bool:
            if not record:
                return False
            return name in reset or (args.fresh and key not in committed.get(name, {}))

        return replaceable

    failed = False
    if pins:  # first: cheap, and a changed default shows before the fingerprints' minute
        defaults = load_store(args.defaults_store)
        committed = committed_store(args.defaults_store) if args.fresh else {}
        pinned = merge_defaults(defaults, pins, replaceable_in(committed))
        failed |= report_defaults(pinned, {pin.name: pin for pin in pins}, record)
        if record and (pinned.added or pinned.extended or pinned.replaced):
            save_store(defaults, args.defaults_store)
            print(f"wrote {args.defaults_store}")
    if fingerprints:
        store = load_store(args.store)
        committed = committed_store(args.store) if args.fresh else {}
        computed = compute_all(fingerprints)
        outcome = merge(store, computed, replaceable_in(committed))
        failed |= report_fingerprints(outcome, computed, record)
        if record and (outcome.added or outcome.replaced):
            save_store(store, args.store)
            print(f"wrote {args.store}")
    return 1 if failed else 0


def report_defaults(outcome: DefaultsOutcome, pins: Mapping[str, Pinned], record: bool) -> bool:
    """Print the outcome; True where it fails the command."""
    for name in outcome.unchanged:
        print(f"unchanged  defaults of {name}")
    for name, params in outcome.extended.items():
        verb = "extended  " if record else "new params"
        print(f"{verb} defaults of {name}  [{pins[name].key}]: {', '.join(params)}")
    for name in outcome.added:
        if record:
            print(f"added      defaults of {name}  [{pins[name].key}]")
        else:
            print(f"MISSING    {missing_defaults_message(pins[name])}")
    for name in outcome.replaced:
        print(f"replaced   defaults of {name}  [{pins[name].key}]")
    for changes in outcome.changed.values():
        for change in changes:
            print(f"CHANGED    {change}")
    if outcome.changed:
        print(
            "not overwritten: a recorded default never changes under the same results versions "
            "(finished runs were hashed without it)"
        )
    return bool(outcome.changed or (not record and outcome.added))


def report_fingerprints(
    outcome: Outcome, computed: Mapping[str, tuple[str, Numbers]], record: bool
) -> bool:
    """Print the outcome; True where it fails the command."""
    for name in outcome.unchanged:
        print(f"unchanged  {name}")
    if record:
        for name in outcome.added:
            print(f"added      {name}  [{computed[name][0]}]")
        for name in outcome.replaced:
            print(f"replaced   {name}  [{computed[name][0]}]")
    else:
        for name in outcome.added:
            print(f"MISSING    {missing_message(BY_NAME[name])}")
    for name, diffs in outcome.changed.items():
        print(f"CHANGED    {changed_message(BY_NAME[name], diffs)}")
    if outcome.changed:
        print(
            "not overwritten: a recorded fingerprint never changes under the same results "
            "versions (finished runs were made with them)"
        )
    return bool(outcome.changed or (not record and outcome.added))


if __name__ == "__main__":
    from tests.fingerprints import main as _main  # one copy of the module's classes

    sys.exit(_main())
