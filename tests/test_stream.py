"""Streaming separation: equal to the offline path, latency bounded by construction, raw PCM
mode, ``make separate MODEL=...``, and the refusal of exports (or checkpoints) in a setting
the loop cannot run (another STFT, stereo, other targets)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from lightning_modules.inference.export import export
from lightning_modules.inference.graph import METADATA_KEY, ExportInfo
from lightning_modules.inference.runtime import load_exported
from lightning_modules.inference.separate import main as separate_main
from lightning_modules.inference.stream import BlockStream, stream_array, stream_raw
from tests.exported_models import checkpoint_with, tiny_checkpoint, tiny_separator

RATE = 16000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    separator = tiny_separator(rate=RATE)
    path, _ = export(separator, tmp_path_factory.mktemp("export") / "model.onnx", "onnx")
    return separator, path


def _mixture(seconds: float = 2.3, seed: int = 0) -> np.ndarray:
    # Not a multiple of the hop or the block: the tail takes the zero-padded last block.
    generator = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.4 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (tone + 0.1 * generator.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("chunk", [4096, 1000, 7777])
def test_streaming_equals_the_offline_separation(exported, chunk: int) -> None:
    separator, path = exported
    mixture = _mixture()
    with torch.no_grad():
        offline = separator.separate_vocals(torch.from_numpy(mixture)).numpy()
    model = load_exported(path)
    vocals, accompaniment = stream_array(BlockStream(model, model.info), mixture, chunk)
    assert vocals.shape == offline.shape
    # Both paths run the same float32 graph on the same frames; they differ by float32 FFT
    # rounding (offline: torch float32, stream: numpy float64) and ONNX Runtime's kernels,
    # i.e. ~1e-7 of the peak. A block-boundary error (a frame missing from the overlap-add, a
    # wrong window normalisation, a shifted block) is of the order of the signal itself.
    peak = np.abs(mixture).max()
    assert np.abs(vocals - offline).max() <= 1e-5 * peak
    assert np.abs(offline).max() > 0.05 * peak  # the model outputs something to compare
    np.testing.assert_allclose(vocals + accompaniment, mixture, atol=1e-6)


def test_latency_is_bounded_by_the_block(exported) -> None:
    _, path = exported
    model = load_exported(path)
    stream = BlockStream(model, model.info)
    # 8 frames, n_fft 2048, hop 512: a block's STFT sees 5632 samples (176 ms at 32 kHz)
    assert stream.latency + 1 == 2048 + 7 * 512
    mixture = _mixture(seconds=3.0)
    first_output_at = None
    for start in range(0, mixture.size, 333):
        vocals, _ = stream.push(mixture[start : start + 333])
        assert stream.received - stream.emitted <= stream.latency
        if vocals.size and first_output_at is None:
            first_output_at = stream.received
    # the first block runs once its 5632 samples (the first 1024 of them centre padding) are in
    assert first_output_at is not None and first_output_at - 333 < 5632 - 1024 <= first_output_at
    assert stream.emitted == 3072 + 4096 * (len(stream.block_seconds) - 1)
    stream.flush()
    assert stream.emitted == stream.received == mixture.size


def test_raw_pcm_stream_from_stdin(exported) -> None:
    _, path = exported
    mixture = _mixture(seconds=1.0)
    pcm = np.round(mixture * 32767).astype("<i2")
    sink = io.BytesIO()
    assert stream_raw(path, "s16le", io.BytesIO(pcm.tobytes()), sink) == mixture.size
    out = np.frombuffer(sink.getvalue(), dtype="<i2").reshape(-1, 2)
    model = load_exported(path)
    vocals, accompaniment = stream_array(
        BlockStream(model, model.info), pcm.astype(np.float64) / 32768, 4096
    )
    assert out.shape == (mixture.size, 2)
    assert np.abs(out[:, 0] / 32767 - vocals).max() <= 2 / 32767
    assert np.abs(out[:, 1] / 32767 - accompaniment).max() <= 2 / 32767


def test_make_separate_with_an_exported_model(exported, tmp_path, capsys) -> None:
    _, path = exported
    song = tmp_path / "song.wav"
    sf.write(song, np.stack([_mixture(1.5)] * 2, axis=1), 22050)  # stereo, another rate
    out = tmp_path / "out"
    assert separate_main(["--input", str(song), "--model", str(path), "--out", str(out)]) == 0
    for stem in ("vocals", "accompaniment"):
        info = sf.info(out / f"song_{stem}.wav")
        assert info.samplerate == 22050 and abs(info.frames - int(1.5 * RATE)) <= 1
    capsys.readouterr()
    missing = tmp_path / "missing.onnx"
    assert separate_main(["--input", str(song), "--model", str(missing)]) == 2
    assert f"exported model {missing} does not exist" in capsys.readouterr().err


# -- only the thesis's setting streams ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"n_fft": 4096, "hop": 1024, "bins": 2048}, "STFT n_fft=4096, hop=1024"),
        ({"window": "hamming"}, "window=hamming"),
        ({"keep_dc": True, "bins": 1025}, "DC bin kept"),
        ({"win_length": 1024}, "win_length=1024"),
        ({"channels": 2}, "2 channels (stereo; supported: mono)"),
        ({"target": "drums"}, "target 'drums' (supported: vocals or accompaniment)"),
        ({"bins": 512}, "512 bins where its STFT has 1024"),
        ({"window": "blackman"}, "STFT window 'blackman'"),
    ],
    ids=["n_fft", "window", "dc", "win_length", "stereo", "target", "bins", "unknown-window"],
)
def test_stream_refuses_an_export_it_cannot_run(fields: dict, named: str) -> None:
    info = ExportInfo(
        **{"rate": RATE, "frames": 8, "target": "vocals", "source": "paper.ckpt"} | fields
    )
    with pytest.raises(ValueError, match="paper.ckpt: streaming") as refused:
        BlockStream(lambda magnitude: magnitude, info)
    assert named in str(refused.value)


def test_metadata_of_older_exports_reads_as_the_thesis_setting() -> None:
    # files written before the STFT and channel fields existed carry none of them
    old = '{"rate": 32000, "frames": 8, "target": "vocals", "n_fft": 2048, "hop": 512}'
    info = ExportInfo.from_json(old, "old.onnx")
    assert (info.window, info.win_length, info.keep_dc, info.channels) == ("hann", None, False, 1)
    assert BlockStream(lambda magnitude: magnitude, info).span == 2048 + 7 * 512


def test_make_separate_refuses_a_stereo_export_before_reading_the_song(tmp_path, capsys) -> None:
    # a TorchScript file whose metadata says stereo (the exporter itself never writes one)
    path = tmp_path / "stereo.pt"
    info = ExportInfo(rate=RATE, frames=8, target="vocals", channels=2)
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path), {METADATA_KEY: info.to_json()})
    song = tmp_path / "not-read.wav"  # does not exist: the refusal must come first
    assert separate_main(["--input", str(song), "--model", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"error: {path}: streaming supports only the thesis's STFT, mono audio" in error
    assert "2 channels (stereo" in error


@pytest.mark.parametrize(
    ("model", "data", "named"),
    [
        ({"channels": 2}, None, "2 channels (stereo"),
        ({"channels": None}, {"channels": 2}, "2 channels (stereo"),  # the data's only
        ({"multi_target": True, "targets": "all"}, None, "targets vocals, drums, bass, other"),
    ],
    ids=["stereo", "stereo-data", "four-targets"],
)
def test_make_separate_refuses_a_stereo_or_multi_target_checkpoint(
    tmp_path, capsys, model: dict | None, data: dict | None, named: str
) -> None:
    # make separate reads mono and writes vocals + accompaniment; a checkpoint separates with
    # its own STFT, so only channels and targets are checked for it
    base = tiny_checkpoint(tmp_path / "thesis.ckpt")
    checkpoint = checkpoint_with(base, tmp_path / "paper.ckpt", model, data)
    song = tmp_path / "not-read.wav"
    assert separate_main(["--input", str(song), "--checkpoint", str(checkpoint)]) == 2
    error = capsys.readouterr().err
    assert f"error: {checkpoint}: make separate supports only mono audio and one target" in error
    assert named in error


def test_make_separate_with_a_checkpoint_allows_its_own_stft(tmp_path, capsys) -> None:
    from lightning_modules.inference.separate import separate_file

    song = tmp_path / "song.wav"
    sf.write(song, _mixture(0.5), RATE)
    separator = tiny_separator(rate=RATE, stft={"n_fft": 1024, "hop": 256})  # its own STFT
    written = separate_file(separator, song, tmp_path / "out")
    assert sorted(written) == ["accompaniment", "vocals"]
    stereo = tiny_separator(rate=RATE, channels=2, net_channels=(2, 2))
    with pytest.raises(ValueError, match="SpectrogramSeparator: make separate supports only mono"):
        separate_file(stereo, song, tmp_path / "out")
