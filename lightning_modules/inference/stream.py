"""Streaming separation in blocks of C STFT frames through an exported model.

Each block takes ``C * hop`` new samples (C = 8, hop 512: 4096 samples = 128 ms at 32 kHz),
computes the block's C STFT frames over ``n_fft + (C - 1) * hop`` samples (5632 = 176 ms),
runs the exported spectral pipeline once (batch 1), puts the mixture phase back and
overlap-adds the inverse frames. Overlap-add divides by the accumulated squared window, as
``torch.istft`` does, so the output is exactly the offline iSTFT across block boundaries.

Latency by construction: a sample is emitted once no later frame overlaps it, i.e. after the
block holding the last frame that covers it. Every output sample therefore leaves at most
``n_fft + (C - 1) * hop - 1`` input samples after it came in (5631 samples, 176 ms at 32 kHz,
plus the time to compute one block); ``received - emitted`` never exceeds that. The stream
starts with ``n_fft / 2`` zeros (what the offline ``stft(center=True)`` pads) and ends with
the offline path's zero padding, so streaming a file equals the offline separation.

``python -m lightning_modules.inference.stream --model model.onnx --input song.wav --out DIR``
writes the two stems; ``--raw f32le|s16le`` reads mono PCM at the model's rate from stdin and
writes interleaved (vocals, accompaniment) PCM to stdout as it is produced.

Only the thesis's setting streams (the framing above is that STFT, the output those two mono
signals): an export whose metadata names another STFT, more than one channel or a target other
than vocals/accompaniment is refused with an error naming what is unsupported.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lightning_modules.inference.graph import ExportInfo
from lightning_modules.inference.runtime import load_exported
from lightning_modules.inference.support import (
    THESIS_TARGETS,
    SignalSetting,
    require_thesis_setting,
)

RAW_FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}


def require_streamable(info: ExportInfo, source: str = "") -> None:
    """Refuse an export this loop would run wrongly: another STFT than the thesis's (it frames
    with a periodic Hann of ``n_fft`` and drops the DC bin), more than one channel, or a target
    that is neither vocals nor accompaniment (it writes exactly those two)."""
    where = source or info.source or "exported model"
    try:
        stft = info.stft
    except ValueError as error:  # e.g. a window STFTConfig does not know
        raise ValueError(f"{where}: streaming cannot run this export: {error}") from error
    reasons = []
    if info.target not in THESIS_TARGETS:
        reasons.append(f"target {info.target!r} (supported: vocals or accompaniment)")
    if info.bins != stft.bins:
        reasons.append(f"{info.bins} bins where its STFT has {stft.bins}")
    if reasons:
        raise ValueError(f"{where}: streaming cannot run this export: {'; '.join(reasons)}")
    require_thesis_setting(SignalSetting(stft, info.channels), "streaming", where)


class BlockStream:
    """Push mixture samples in, get (vocals, accompaniment) samples out, block by block.

    Args:
        model: ``(1, bins, frames)`` float32 mixture magnitude -> target magnitude.
        info: the export's metadata (frames, n_fft, hop, target).
    """

    def __init__(self, model: Callable[[np.ndarray], np.ndarray], info: ExportInfo) -> None:
        require_streamable(info, str(getattr(model, "path", "") or ""))
        self.model, self.info = model, info
        self.n_fft, self.hop, self.frames = info.n_fft, info.hop, info.frames
        self.step = self.frames * self.hop  # new samples per block
        self.span = self.n_fft + (self.frames - 1) * self.hop  # samples one block's STFT sees
        self.latency = self.span - 1  # max samples between a sample's arrival and its output
        self.pad = self.n_fft // 2
        n = np.arange(self.n_fft)
        self.window = 0.5 - 0.5 * np.cos(2 * np.pi * n / self.n_fft)  # periodic Hann
        # Padded input from the current block's first sample on; the stream starts with the
        # offline STFT's centre padding.
        self.buffer = np.zeros(self.pad)
        self.start = 0  # padded index of buffer[0]
        self.numerator = np.zeros(self.span)  # overlap-add sums from padded index start on
        self.denominator = np.zeros(self.span)
        self.received = self.emitted = 0
        self.block_seconds: list[float] = []  # compute time per block, for latency reports

    def push(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed mono samples; returns the (vocals, accompaniment) samples now complete."""
        samples = np.asarray(samples, dtype=np.float64).reshape(-1)
        self.received += samples.size
        self.buffer = np.concatenate([self.buffer, samples])
        outputs = []
        while self.buffer.size >= self.span:
            outputs.append(self._block(valid_frames=self.frames))
        return self._join(outputs)

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """End of stream: the remaining samples, up to exactly as many as were pushed.

        The offline path has ``1 + T // hop`` frames (centre-padded STFT) and zero-pads the
        last block's magnitude; here the same frames are computed, frames past them get zero
        magnitude at the network's input and are left out of the overlap-add."""
        total_frames = 1 + self.received // self.hop
        done_frames = self.start // self.hop
        outputs = []
        while done_frames < total_frames:
            missing = self.span - self.buffer.size
            if missing > 0:
                self.buffer = np.concatenate([self.buffer, np.zeros(missing)])
            outputs.append(self._block(valid_frames=min(self.frames, total_frames - done_frames)))
            done_frames += self.frames
        if self.emitted < self.received:  # complete, but short of a whole block
            outputs.append(self._emit(self.received - self.emitted))
        vocals, accompaniment = self._join(outputs)
        keep = vocals.size - (self.emitted - self.received)  # drop the padding's output
        self.emitted = self.received
        return vocals[:keep], accompaniment[:keep]

    def _block(self, valid_frames: int) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        x = self.buffer[: self.span]
        starts = np.arange(self.frames) * self.hop
        frames = x[starts[:, None] + np.arange(self.n_fft)] * self.window  # (C, n_fft)
        spectrum = np.fft.rfft(frames, axis=-1)[:, 1:].T  # (bins, C), DC dropped
        magnitude = np.abs(spectrum).astype(np.float32)
        magnitude[:, valid_frames:] = 0  # as in_blocks pads the last offline block
        estimate = np.asarray(self.model(magnitude[None]), dtype=np.float64)[0]
        phase = np.exp(1j * np.angle(spectrum))
        target = estimate * phase
        full = np.concatenate([np.zeros((1, self.frames)), target], axis=0).T  # DC back
        inverse = np.fft.irfft(full, n=self.n_fft, axis=-1) * self.window
        for t in range(valid_frames):
            self.numerator[starts[t] : starts[t] + self.n_fft] += inverse[t]
            self.denominator[starts[t] : starts[t] + self.n_fft] += self.window**2
        # The first `step` padded samples get no later frame: they are final.
        out = self._emit(self.step)
        self.block_seconds.append(time.perf_counter() - started)
        return out

    def _emit(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Output the first ``n`` overlap-added samples and move the stream on by ``n``."""
        wave = self.numerator[:n] / np.maximum(self.denominator[:n], 1e-11)
        mixture = self.buffer[:n]
        self.numerator = np.concatenate([self.numerator[n:], np.zeros(n)])
        self.denominator = np.concatenate([self.denominator[n:], np.zeros(n)])
        self.buffer = self.buffer[n:]
        skip = max(0, self.pad - self.start)  # output of the leading centre padding
        self.start += n
        wave, mixture = wave[skip:], mixture[skip:]
        self.emitted += wave.size
        vocals = wave if self.info.target == "vocals" else mixture - wave
        return vocals, mixture - vocals

    @staticmethod
    def _join(outputs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        if not outputs:
            return np.zeros(0), np.zeros(0)
        return tuple(np.concatenate(parts) for parts in zip(*outputs, strict=True))


def stream_array(
    stream: BlockStream, mixture: np.ndarray, chunk: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Run a whole signal through ``stream`` in chunks of ``chunk`` samples."""
    parts = []
    n_chunks = -(-mixture.size // chunk)
    for i in range(n_chunks):
        parts.append(stream.push(mixture[i * chunk : (i + 1) * chunk]))
        if progress and (i + 1) % 50 == 0:
            print(f"  {i + 1}/{n_chunks} chunks", file=sys.stderr, flush=True)
    parts.append(stream.flush())
    vocals, accompaniment = BlockStream._join(parts)
    return vocals, accompaniment


def separate_file(
    model_path: str | Path, input_path: str | Path, out_dir: str | Path, runtime: str = "auto"
) -> dict:
    """``make separate MODEL=... [RUNTIME=...]``: a file streamed through an exported model (in
    ``runtime``, ``runtime.load_exported``), written as ``<song>_vocals.wav`` and
    ``<song>_accompaniment.wav`` at the input's rate."""
    import librosa
    import soundfile as sf

    from datamodules.cache import RESAMPLER
    from lightning_modules.inference.audio import read_audio

    model = load_exported(model_path, runtime=runtime)
    info = model.info
    require_streamable(info, str(model_path))  # before the song is read and resampled
    mono, rate = read_audio(input_path)
    if rate != info.rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=info.rate, res_type=RESAMPLER)
    stream = BlockStream(model, info)
    print(
        f"streaming {input_path} through {model_path}: blocks of {info.frames} frames "
        f"({stream.step} new samples), look-ahead {stream.latency + 1} samples "
        f"({1000 * (stream.latency + 1) / info.rate:.0f} ms)",
        file=sys.stderr,
        flush=True,
    )
    vocals, accompaniment = stream_array(stream, mono, stream.step, progress=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, signal in (("vocals", vocals), ("accompaniment", accompaniment)):
        if rate != info.rate:
            signal = librosa.resample(signal, orig_sr=info.rate, target_sr=rate, res_type=RESAMPLER)
        written[name] = out / f"{Path(input_path).stem}_{name}.wav"
        sf.write(written[name], signal.astype(np.float32), rate, subtype="FLOAT")
    median = 1000 * float(np.median(stream.block_seconds)) if stream.block_seconds else 0.0
    print(
        f"{len(stream.block_seconds)} blocks, median {median:.2f} ms per block",
        file=sys.stderr,
    )
    return written


def raw_chunks(source: BinaryIO, dtype: np.dtype, samples: int) -> Iterator[np.ndarray]:
    """Mono PCM from a byte stream as float samples in [-1, 1), as it arrives."""
    scale = 32768.0 if dtype.kind == "i" else 1.0
    pending = b""
    while True:
        data = source.read(samples * dtype.itemsize)
        if not data:
            break
        pending += data
        usable = len(pending) - len(pending) % dtype.itemsize
        yield np.frombuffer(pending[:usable], dtype=dtype).astype(np.float64) / scale
        pending = pending[usable:]


def stream_raw(model_path: str | Path, fmt: str, source: BinaryIO, sink: BinaryIO) -> int:
    """Live mode: PCM in, interleaved (vocals, accompaniment) PCM out, block by block."""
    model = load_exported(model_path)
    stream = BlockStream(model, model.info)
    dtype = RAW_FORMATS[fmt]
    scale = 32767.0 if dtype.kind == "i" else 1.0

    def write(vocals: np.ndarray, accompaniment: np.ndarray) -> None:
        if vocals.size:
            pcm = np.stack([vocals, accompaniment], axis=1) * scale
            if dtype.kind == "i":
                pcm = np.clip(np.round(pcm), -32768, 32767)
            sink.write(pcm.astype(dtype).tobytes())
            sink.flush()

    for chunk in raw_chunks(source, dtype, stream.step):
        write(*stream.push(chunk))
    write(*stream.flush())
    return stream.received


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported model (.onnx or .pt)")
    parser.add_argument("--input", help="audio file; without it, raw PCM from stdin (--raw)")
    parser.add_argument("--out", default="separated", help="output folder (file mode)")
    parser.add_argument("--raw", choices=sorted(RAW_FORMATS), default="f32le")
    args = parser.parse_args(argv)
    try:
        if args.input is None:
            stream_raw(args.model, args.raw, sys.stdin.buffer, sys.stdout.buffer)
            return 0
        written = separate_file(args.model, args.input, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
