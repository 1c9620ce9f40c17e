"""Shared fixtures: one tiny synthetic MUSDB tree and one decoded DataModule cache per session."""

from __future__ import annotations

from pathlib import Path

import pytest

import datamodules  # noqa: F401  (ffmpeg on PATH before any test imports musdb or stempeg)

# The real SLURM cluster and PostgreSQL server fixtures (started by .ci/services/*.sh).
pytest_plugins = ["tests.services"]

#: Tiny synthetic MUSDB18 wav tree (44.1 kHz files) shared by the data-path tests.
SYNTHETIC = {"n_train": 3, "n_test": 2, "duration": 4.0, "seed": 0}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.synthetic import write_synthetic_musdb

    root = tmp_path_factory.mktemp("synthetic") / "musdb"
    return Path(write_synthetic_musdb(root, **SYNTHETIC, rate=44100, progress=False))


@pytest.fixture(scope="session")
def synthetic_dm_kwargs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """MUSDBDataModule arguments over ``synthetic_root`` whose cache is already decoded (once
    per session): 16 kHz, 8 context frames, training tracks cut to their most active 3 s."""
    from datamodules.musdb_datamodule import MUSDBDataModule

    kwargs = {
        "root": str(synthetic_root),
        "rate": 16000,
        "context_frames": 8,
        "batch_size": 4,
        "excerpt_seconds": 3.0,
        "cache_dir": str(tmp_path_factory.mktemp("dm-cache")),
    }
    MUSDBDataModule(**kwargs).prepare_data()
    return dict(kwargs)


@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch):
    """Decoded data of end-to-end runs go to one session-wide cache outside the repository,
    and no real MUSDB18 root leaks in from the environment."""
    import datamodules.musdb_datamodule as dm

    monkeypatch.setattr(dm, "DEFAULT_CACHE_DIR", tmp_path_factory.getbasetemp() / "suite-cache")
    monkeypatch.delenv("MUSDB_ROOT", raising=False)


def fake_musdb_root(root: Path) -> Path:
    """A MUSDB18 wav-layout tree of empty files: enough for everything that reads only names
    (planning a table checks the root before anything runs), nothing that decodes audio."""
    for subset in ("train", "test"):
        track = root / subset / f"Artist - {subset} song"
        track.mkdir(parents=True)
        for name in ("mixture", "vocals", "drums", "bass", "other"):
            (track / f"{name}.wav").touch()
    return root
