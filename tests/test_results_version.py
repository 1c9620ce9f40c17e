"""A change of results cannot go unnoticed: every versioned class (``results_version``, part of
a run folder's hash, sweeps/identity.py) has a pinned fingerprint per version
(tests/fingerprints.py, tests/results_fingerprints.json), and a fingerprint whose numbers
change while its versions did not fails here, telling the developer which version to bump.
The constructor defaults that a run's hash leaves out are pinned the same way
(tests/results_defaults.json): a default that changes while its versions did not fails here."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from sweeps import identity
from tests import fingerprints
from tests.fingerprints import BY_NAME, FINGERPRINTS, Workspace

REPO = Path(__file__).resolve().parent.parent
_suite_classes = fingerprints.suite_classes


def _class_paths(value: object) -> list[str]:
    if isinstance(value, dict):
        own = [v for k, v in value.items() if k.endswith("class_path") and isinstance(v, str)]
        return own + [p for v in value.values() for p in _class_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _class_paths(v)]
    return []


def _configured_classes() -> dict[str, type]:
    """The suite's classes named by a class path anywhere in experiments/ (experiment files,
    table bases and row overrides), plus the one data module every run uses."""
    from datamodules.musdb_datamodule import MUSDBDataModule

    found: dict[str, type] = {"MUSDBDataModule (every run)": MUSDBDataModule}
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        for class_path in _class_paths(yaml.safe_load(path.read_text())):
            if class_path.split(".")[0] in ("lightning_modules", "datamodules"):
                found[f"{class_path} ({path.relative_to(REPO)})"] = fingerprints._import(class_path)
    return found


# -- (a) coverage -----------------------------------------------------------------------------


def test_every_versioned_class_has_a_fingerprint() -> None:
    versioned = {cls.__qualname__ for cls in _suite_classes() if "results_version" in vars(cls)}
    assert versioned, "no class defines results_version: the discovery is broken"
    subjects = {fp.subject for fp in FINGERPRINTS}
    missing = sorted(versioned - subjects)
    assert not missing, (
        f"{missing} define results_version but have no fingerprint: add one to "
        "tests/fingerprints.py (FINGERPRINTS) and run `python -m tests.fingerprints record`"
    )
    unknown = sorted(subjects - versioned)
    assert not unknown, f"fingerprints of classes without a results_version: {unknown}"


def test_every_fingerprint_names_its_class_in_its_key() -> None:
    for fp in FINGERPRINTS:
        assert fp.subject in fp.versions(), (fp.name, fp.key)


def test_every_trainable_or_configured_class_defines_a_results_version() -> None:
    """A LightningModule or DataModule of the suite, or any class a config names, defines its
    own ``results_version`` (an inherited one would not go stale when the subclass changes)."""
    lightning = [
        cls
        for cls in _suite_classes()
        if issubclass(cls, L.LightningModule | L.LightningDataModule)
    ]
    named = _configured_classes()
    assert len(named) > 5, "no class path found in experiments/: the walk is broken"
    without = [f"{c.__module__}.{c.__qualname__}" for c in lightning if not _own_version(c)]
    without += [where for where, cls in named.items() if not _own_version(cls)]
    assert not without, (
        f"{sorted(set(without))} define no results_version of their own: add "
        "`results_version: ClassVar[int] = 1` to the class (sweeps/identity.py) and a "
        "fingerprint to tests/fingerprints.py"
    )


def _own_version(cls: type) -> bool:
    return "results_version" in vars(cls)


def test_versioned_components_of_a_network_enter_its_key() -> None:
    """Every versioned network a fingerprinted network builds inside itself is in its key
    (``results_components``), so bumping it changes the runs' hashes."""
    gaps = []
    for fp in FINGERPRINTS:
        for config in fp.configs:
            if not config["class_path"].startswith("lightning_modules.nets"):
                continue
            torch.manual_seed(0)
            inner = {type(m).__qualname__ for m in fingerprints.build_net(config).modules()}
            inner = {name for name in inner if name in _versioned_names()}
            gaps += [f"{fp.name}: {name}" for name in sorted(inner - set(fp.versions()))]
    assert not gaps, gaps


def _versioned_names() -> set[str]:
    return {cls.__qualname__ for cls in _suite_classes() if _own_version(cls)}


# -- (b) every fingerprint matches its record ------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("fingerprints"))


@pytest.fixture(scope="module")
def store() -> dict:
    return fingerprints.load_store()


@pytest.mark.parametrize("name", [fp.name for fp in FINGERPRINTS])
def test_fingerprint_matches_its_record(name: str, workspace: Workspace, store: dict) -> None:
    fp = BY_NAME[name]
    recorded = store.get(name, {}).get(fp.key)
    assert recorded is not None, fingerprints.missing_message(fp)
    diffs = fingerprints.differences(recorded, fingerprints.compute(fp, workspace))
    assert not diffs, fingerprints.changed_message(fp, diffs)


def test_the_store_is_well_formed() -> None:
    store = fingerprints.load_store()
    for name, entries in store.items():
        for key, numbers in entries.items():
            assert all(part.count("=") == 1 for part in key.split(",")), (name, key)
            assert numbers and all(v is None or isinstance(v, float) for v in numbers.values())


# -- (c) the mechanism can fail --------------------------------------------------------------

CHEAP = "MMDenseNet/mel_nodsconvs_bc"  # a network forward: well under a second


def test_a_changed_result_is_reported(
    workspace: Workspace, store: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_modules.nets import MMDenseNet

    fp = BY_NAME[CHEAP]
    forward = MMDenseNet.forward
    monkeypatch.setattr(MMDenseNet, "forward", lambda self, x: forward(self, x) * 1.01)
    diffs = fingerprints.differences(store[CHEAP][fp.key], fingerprints.compute(fp, workspace))
    assert diffs and all(line.startswith(("train.", "eval.")) for line in diffs)
    message = fingerprints.changed_message(fp, diffs)
    assert f"results of {CHEAP} changed while its results versions {fp.key} did not" in message
    assert "bump `results_version`" in message and "tests.fingerprints record" in message


def test_a_bumped_version_asks_for_a_record(store: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_modules.nets import MMDenseNet

    fp = BY_NAME[CHEAP]
    before = fp.key
    monkeypatch.setattr(MMDenseNet, "results_version", 2)
    assert fp.key == before.replace("MMDenseNet=1", "MMDenseNet=2") != before
    assert fp.key not in store[CHEAP]
    assert "run the recorder after bumping" in fingerprints.missing_message(fp)
    # every fingerprint whose runs use an MMDenseNet by class path moves to a new key
    moved = {f.name for f in FINGERPRINTS if "MMDenseNet=2" in f.key}
    assert {"SpectrogramSeparator/baseline", "WienerCombination/two_baselines"} <= moved


def test_tolerances() -> None:
    assert not fingerprints.differences({"a": 1.0, "b": None}, {"a": 1.0 + 1e-4, "b": None})
    assert fingerprints.differences({"a": 1.0}, {"a": 1.002})
    assert fingerprints.differences({"a": 1.0}, {"a": None})
    assert fingerprints.differences({"a": 1.0}, {"a": 1.0, "b": 2.0})  # a new number
    assert fingerprints.differences({"a": 1.0, "b": 2.0}, {"a": 1.0})  # a dropped number
    # dB values are compared absolutely (1e-3 dB), at 0 dB as at 40 dB
    assert not fingerprints.differences({"test/SDR": 0.0043}, {"test/SDR": 0.0037})
    assert not fingerprints.differences({"test/SIR": 40.0}, {"test/SIR": 40.0005})
    assert fingerprints.differences({"test/SIR": 40.0}, {"test/SIR": 40.002})
    assert fingerprints.differences({"val/loss": 0.00431}, {"val/loss": 0.00432})


def _run_recorder(
    monkeypatch: pytest.MonkeyPatch, path: Path, numbers: dict, *args: str, committed=None
) -> int:
    fp = BY_NAME[CHEAP]
    monkeypatch.setattr(fingerprints, "compute_all", lambda fps: {CHEAP: (fp.key, numbers)})
    monkeypatch.setattr(fingerprints, "committed_store", lambda path: committed or {})
    defaults = str(path.with_name("defaults.json"))  # --only CHEAP: none written, to be sure
    return fingerprints.main(
        ["record", "--only", CHEAP, "--store", str(path), "--defaults-store", defaults, *args]
    )


def test_the_recorder_adds_but_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    fp = BY_NAME[CHEAP]
    path = tmp_path / "store.json"
    old_key = "MMDenseNet=0,MUSDBDataModule=1"
    path.write_text(json.dumps({CHEAP: {old_key: {"x": 1.0}}}))

    assert _run_recorder(monkeypatch, path, {"x": 2.0}) == 0  # a new key is added
    assert json.loads(path.read_text())[CHEAP] == {old_key: {"x": 1.0}, fp.key: {"x": 2.0}}
    assert "added" in capsys.readouterr().out

    assert _run_recorder(monkeypatch, path, {"x": 2.0}) == 0  # the same numbers: nothing to do
    before = path.read_text()
    assert _run_recorder(monkeypatch, path, {"x": 3.0}) == 1  # changed under the same key
    assert path.read_text() == before
    out = capsys.readouterr().out
    assert f"results of {CHEAP} changed while its results versions {fp.key}" in out
    assert "not overwritten" in out

    committed = {CHEAP: {fp.key: {"x": 2.0}}}
    assert _run_recorder(monkeypatch, path, {"x": 3.0}, "--fresh", committed=committed) == 1
    assert path.read_text() == before  # --fresh keeps committed entries

    assert _run_recorder(monkeypatch, path, {"x": 3.0}, "--fresh") == 0  # not committed
    assert json.loads(path.read_text())[CHEAP][fp.key] == {"x": 3.0}
    assert _run_recorder(monkeypatch, path, {"x": 4.0}, "--reset", CHEAP) == 0  # explicit
    store = json.loads(path.read_text())[CHEAP]
    assert store == {old_key: {"x": 1.0}, fp.key: {"x": 4.0}}  # other keys are kept


# -- (d) pinned defaults ----------------------------------------------------------------------

PINS = {pin.name: pin for pin in fingerprints.pinned_classes()}


def test_every_versioned_class_and_the_trainer_have_pinned_defaults() -> None:
    from lightning.pytorch import Trainer

    from datamodules.musdb_datamodule import MUSDBDataModule

    assert len(PINS) == len(fingerprints.pinned_classes()), "two pinned classes share a name"
    pinned = {pin.cls for pin in PINS.values()}
    assert set(fingerprints.versioned_classes()) | {Trainer, MUSDBDataModule} <= pinned
    separator = fingerprints.run_versions(fingerprints.class_config(fingerprints.Separator))
    assert PINS["Trainer"].key == fingerprints.version_key(separator)
    assert "Separator=" in PINS["Trainer"].key and "synthetic data" not in PINS["Trainer"].key


def test_every_hashed_library_class_of_the_experiments_is_pinned() -> None:
    """A class of another library named in experiments/ enters the runs' identity with its
    defaults left out, unless it only reports (a logger, a progress bar: runtime-only)."""
    from lightning.pytorch.loggers import Logger

    pinned = {pin.cls for pin in PINS.values()}
    unpinned = set()
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        for class_path in _class_paths(yaml.safe_load(path.read_text())):
            if class_path.split(".")[0] in ("lightning_modules", "datamodules"):
                continue
            cls = fingerprints._import(class_path)
            runtime = cls.__qualname__ in identity.RUNTIME_CALLBACKS or issubclass(cls, Logger)
            if not runtime and cls not in pinned:
                unpinned.add(f"{class_path} ({path.relative_to(REPO)})")
    assert not unpinned, (
        f"{sorted(unpinned)} enter the runs' hashes without their defaults: add them to "
        "LIBRARY_CLASSES (tests/fingerprints.py) and run `python -m tests.fingerprints record`"
    )


@pytest.fixture(scope="module")
def defaults_store() -> dict:
    return fingerprints.load_store(fingerprints.DEFAULTS_STORE)


@pytest.mark.parametrize("name", sorted(PINS))
def test_pinned_defaults_match_their_record(name: str, defaults_store: dict) -> None:
    pin = PINS[name]
    recorded = defaults_store.get(name, {}).get(pin.key)
    assert recorded is not None, fingerprints.missing_defaults_message(pin)
    changes = fingerprints.default_changes(pin, recorded, pin.defaults())
    assert not changes, "\n".join(changes)


def test_the_defaults_store_is_well_formed(defaults_store: dict) -> None:
    assert set(PINS) <= set(defaults_store)
    for name, entries in defaults_store.items():
        for key, defaults in entries.items():
            assert all(part.count("=") == 1 for part in key.split(",")), (name, key)
            assert "synthetic data" not in key, (name, key)
            assert defaults and list(defaults) == sorted(defaults), (name, key)


#: A parameter ``_patch_defaults`` removes.
REMOVED = object()


def _patch_defaults(monkeypatch: pytest.MonkeyPatch, cls_name: str, **changed: object) -> None:
    """``identity.class_defaults`` with some defaults of one class changed (``REMOVED``: no
    such parameter any more)."""
    original = identity.class_defaults

    def patched(cls: type) -> dict:
        defaults = dict(original(cls))
        if cls.__qualname__ == cls_name:
            for name, value in changed.items():
                defaults.pop(name, None)
                if value is not REMOVED:
                    defaults[name] = value
        return defaults

    monkeypatch.setattr(identity, "class_defaults", patched)


def test_a_changed_default_is_reported(
    defaults_store: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = PINS["SpectrogramSeparator"]
    recorded = defaults_store["SpectrogramSeparator"][pin.key]
    _patch_defaults(
        monkeypatch,
        "SpectrogramSeparator",
        lr=0.003,  # a value that changes
        mel_bins=128,  # a None default that becomes a value
        plateau_patience=REMOVED,  # a parameter that disappears
        brand_new=1.5,  # a new parameter: fine
        eval_workers=7,  # runtime-only: never hashed, fine
    )
    changes = fingerprints.default_changes(pin, recorded, pin.defaults())
    assert len(changes) == 3, changes
    lr, mel_bins, patience = changes
    assert lr.startswith(
        "the default of SpectrogramSeparator.lr changed from 0.002 to 0.003 while its results "
        f"versions {pin.key} did not: a run's hash leaves defaults out, so the old runs would be "
        "taken for new ones; bump results_version of SpectrogramSeparator (sweeps/identity.py) "
        "and record"
    )
    assert "SpectrogramSeparator.mel_bins changed from None to 128" in mel_bins
    assert "SpectrogramSeparator.plateau_patience changed from 10 to (no such" in patience
    # a Trainer default (a Lightning upgrade): the version to bump is Separator's
    trainer = PINS["Trainer"]
    _patch_defaults(monkeypatch, "Trainer", max_steps=10, log_every_n_steps=1)
    recorded = defaults_store["Trainer"][trainer.key]
    (change,) = fingerprints.default_changes(trainer, recorded, trainer.defaults())
    assert "the default of Trainer.max_steps changed from -1 to 10" in change
    assert "bump results_version of Separator (every run's hash holds it)" in change


def _record_defaults(
    monkeypatch: pytest.MonkeyPatch, path: Path, *args: str, command="record", committed=None
) -> int:
    monkeypatch.setattr(fingerprints, "committed_store", lambda path: committed or {})
    return fingerprints.main([command, "--only", "Trainer", "--defaults-store", str(path), *args])


def test_the_recorder_pins_defaults_but_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pin = PINS["Trainer"]
    path = tmp_path / "defaults.json"
    assert _record_defaults(monkeypatch, path, command="check") == 1  # nothing recorded
    assert "MISSING    no defaults of Trainer" in capsys.readouterr().out
    assert not path.exists()
    assert _record_defaults(monkeypatch, path) == 0
    assert json.loads(path.read_text()) == {"Trainer": {pin.key: pin.defaults()}}
    assert "added      defaults of Trainer" in capsys.readouterr().out

    _patch_defaults(monkeypatch, "Trainer", brand_new=3)  # a new parameter is added
    assert _record_defaults(monkeypatch, path) == 0
    assert json.loads(path.read_text())["Trainer"][pin.key]["brand_new"] == 3
    assert "extended   defaults of Trainer" in capsys.readouterr().out

    before = path.read_text()
    _patch_defaults(monkeypatch, "Trainer", brand_new=3, max_steps=10)
    assert _record_defaults(monkeypatch, path) == 1  # a recorded default changed
    assert path.read_text() == before
    out = capsys.readouterr().out
    assert "CHANGED    the default of Trainer.max_steps changed from -1 to 10" in out
    assert "not overwritten" in out
    committed = json.loads(before)
    assert _record_defaults(monkeypatch, path, "--fresh", committed=committed) == 1
    assert path.read_text() == before  # --fresh keeps committed entries
    assert _record_defaults(monkeypatch, path, "--fresh") == 0  # not committed
    assert json.loads(path.read_text())["Trainer"][pin.key]["max_steps"] == 10
