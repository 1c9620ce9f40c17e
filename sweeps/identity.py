"""What a run's result depends on, and so what names its folder.

A run folder is ``<runs>/<hash>/``, the hash of the run's *identity*: its fully resolved config

1. without the **runtime-only** keys of :data:`RUNTIME_ONLY` (where and how verbosely it runs,
   never what it computes): changing them never re-runs anything;
2. without every value that equals its class's **default** (model, network, data module,
   trainer, callbacks): adding an option whose default keeps the old behaviour keeps every
   finished run valid;
3. with the **results version** of every class the config names (model, network, data module;
   a class inherits its bases' versions and those of the networks it builds, its
   ``results_components``; the synthetic data set adds its generator's version).
   ``results_version`` is a class attribute, bumped by the developer whose change alters that
   class's results. The old runs then no longer match (they are *stale*: kept on disk, never
   rendered as current) and the rows run again.
   ``tests/test_results_version.py`` pins a small result per version and fails when a result
   changes while the version did not, so a bump cannot be forgotten silently.

``row_key`` is the same hash without the versions (and with the runs a run starts from or uses
named by their own row keys): a run of the same row made by older code has the same key, which
is how stale runs are recognised.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib
import json
import typing
from collections.abc import Mapping
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer

from datamodules.musdb_datamodule import MUSDBDataModule
from datamodules.synthetic import GENERATOR_VERSION

#: How a config names another run (the one it starts from, or uses): ``run:<hash>``.
RUN_REFERENCE = "run:"
#: Keys that change how a run is carried out or reported, never its numbers. Dotted paths into
#: the resolved config. (``blocks_per_batch`` only groups the test's blocks per forward pass;
#: ``eval_workers`` is how many processes run museval; ``cache_dir`` where decoded audio lives.)
RUNTIME_ONLY: tuple[str, ...] = (
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.default_root_dir",
    "trainer.profiler",
    "trainer.enable_autolog_hparams",
    "trainer.model_registry",
    "model.init_args.eval_workers",
    "model.init_args.blocks_per_batch",
    "data.cache_dir",
)
#: Callbacks that only report (progress, summaries, learning-rate logging): not hashed.
RUNTIME_CALLBACKS: tuple[str, ...] = (
    "LearningRateMonitor",
    "TQDMProgressBar",
    "RichProgressBar",
    "ModelSummary",
    "RichModelSummary",
    "DeviceStatsMonitor",
)


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@functools.cache
def class_defaults(cls: type) -> dict[str, Any]:
    """Every constructor parameter of ``cls`` with its default, serialised as LightningCLI dumps
    a resolved config (None where the default is None or there is none)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, fail_untyped=False, sub_configs=True)
    defaults = parser.get_defaults()
    dumped = yaml.safe_load(parser.dump(defaults, skip_validation=True)) or {}  # no None ones
    names = dict.fromkeys(k.split(".")[0] for k in defaults.keys() if not k.startswith("__"))
    return {name: dumped.get(name) for name in names}


@functools.cache
def _dataclass_parameters(cls: type) -> dict[str, type]:
    """Constructor parameters typed as a dataclass (or an optional one): ``PSPConfig``,
    ``BandConfig``. Their values are dicts in a resolved config, compared field by field."""
    found: dict[str, type] = {}
    for klass in reversed(cls.__mro__):  # a subclass passing **kwargs on: its bases' too
        try:
            hints = typing.get_type_hints(vars(klass).get("__init__"))
        except Exception:  # no own __init__, or an annotation that cannot be evaluated
            continue
        for name, hint in hints.items():
            for candidate in (hint, *typing.get_args(hint)):
                if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
                    found[name] = candidate
    return found


def _without_defaults(values: dict[str, Any], cls: type) -> dict[str, Any]:
    defaults = class_defaults(cls)
    structured = _dataclass_parameters(cls)
    kept = {}
    for key, value in values.items():
        value = _canonical(value)
        if defaults.get(key) == value:
            continue
        if key in structured and isinstance(value, dict):
            # a new field at its default keeps the runs made before it existed (kept as {}
            # when every field is at its default: that differs from the parameter's default)
            value = _without_defaults(value, structured[key])
        kept[key] = value
    return kept


def _canonical(value: Any) -> Any:
    """Class nodes lose their default arguments; lists and dicts are walked."""
    if isinstance(value, dict) and "class_path" in value:
        cls = _import(value["class_path"])
        return {
            "class_path": value["class_path"],
            "init_args": _without_defaults(value.get("init_args") or {}, cls),
        }
    if isinstance(value, dict):
        return {key: _canonical(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _drop(config: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    node.pop(last, None)


def _class_paths(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["class_path"]] if "class_path" in value else []
        return own + [p for v in value.values() for p in _class_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _class_paths(v)]
    return []


def _versions_of(cls: type) -> dict[str, int]:
    """``results_version`` of ``cls``, its bases and the versioned networks it builds inside
    itself (``results_components``: MMDenseNet's MDenseNets, MultiHeadMMDenseNet's MMDenseNet),
    which no config names but whose changes change its results."""
    versions: dict[str, int] = {}
    for klass in cls.__mro__:
        own = vars(klass)
        if "results_version" in own:
            versions[klass.__qualname__] = int(own["results_version"])
        for component in own.get("results_components", ()):
            versions.update(_versions_of(component))
    return versions


def results_versions(resolved: dict[str, Any]) -> dict[str, int]:
    """``{class name: results_version}`` of the data module and of every class the config
    names, with their base classes and components (a fix in a base class is a fix in every
    family); on the synthetic data set also its generator's version."""
    classes = [MUSDBDataModule] + [_import(p) for p in _class_paths(resolved.get("model"))]
    versions = {}
    for cls in classes:
        versions.update(_versions_of(cls))
    if not (resolved.get("data") or {}).get("root"):
        versions["synthetic data"] = GENERATOR_VERSION
    return dict(sorted(versions.items()))


def identity(resolved: dict[str, Any], versions: bool = True) -> dict[str, Any]:
    """The part of a resolved config that names its run (see the module docstring)."""
    config = copy.deepcopy(resolved)
    for key in RUNTIME_ONLY:
        _drop(config, key)
    trainer = config.get("trainer") or {}
    trainer["callbacks"] = [
        c
        for c in trainer.get("callbacks") or []
        if c["class_path"].rpartition(".")[2] not in RUNTIME_CALLBACKS
    ] or None
    out: dict[str, Any] = {}
    for section, value in config.items():
        if section == "trainer":
            value = _without_defaults(value, Trainer)
        elif section == "data":
            value = _without_defaults(value, MUSDBDataModule)
        else:
            value = _canonical(value)
        if value not in (None, {}):
            out[section] = value
    if versions:
        out["results_version"] = results_versions(resolved)
    return out


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_hash(resolved: dict[str, Any]) -> str:
    """Name of a run folder. The run's own paths (its folder, checkpoints, logs) are only added
    when it executes, so they are not part of it."""
    return _digest(identity(resolved))


def _referenced_keys(value: Any, references: Mapping[str, str]) -> Any:
    """``run:<hash>`` -> ``row:<row key of that run>``, wherever it appears."""
    if isinstance(value, str) and value.startswith(RUN_REFERENCE):
        run = value.removeprefix(RUN_REFERENCE)
        return f"row:{references.get(run, run)}"
    if isinstance(value, dict):
        return {key: _referenced_keys(v, references) for key, v in value.items()}
    if isinstance(value, list):
        return [_referenced_keys(v, references) for v in value]
    return value


def row_key(resolved: dict[str, Any], references: Mapping[str, str] | None = None) -> str:
    """The hash without results versions: equal for a run and its stale predecessors.
    ``references`` maps the hash of every run this one starts from or uses (``run:<hash>``,
    a hash that contains versions) to that run's own row key, so that a multi-stage row or a
    row using another row keeps its key across a version bump too."""
    return _digest(_referenced_keys(identity(resolved, versions=False), references or {}))
