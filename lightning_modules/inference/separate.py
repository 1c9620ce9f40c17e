"""Split a song into vocals and accompaniment with a trained checkpoint or an exported model.

``python -m lightning_modules.inference.separate --input song.wav --checkpoint best.ckpt
--out DIR`` (or ``make separate IN=... CKPT=... OUT=...``) writes ``DIR/<song>_vocals.wav`` and
``DIR/<song>_accompaniment.wav`` at the input's sample rate (mono, as the models are).
``--model model.onnx`` (``make separate IN=... MODEL=...``) instead streams the song through an
exported model (``make export``) in blocks, as ``lightning_modules.inference.stream`` does;
``--runtime`` (``RUNTIME=``) picks what runs it: ``onnxruntime`` or ``openvino`` for ``.onnx``,
``torchscript`` for ``.pt`` (default ``auto``: by the file's suffix).

Both read mono audio and write vocals and accompaniment: a stereo model or one with several
targets is refused (naming what is unsupported). A checkpoint separates with its own STFT;
an exported model streams with the thesis's only (``stream.require_streamable``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from datamodules.cache import RESAMPLER
from lightning_modules.inference.audio import read_audio
from lightning_modules.inference.runtime import RUNTIMES
from lightning_modules.inference.stream import separate_file as stream_file
from lightning_modules.inference.support import (
    checkpoint_setting,
    model_setting,
    require_thesis_setting,
)
from lightning_modules.separators.checkpoint import load_separator
from lightning_modules.separators.separator import Separator


@torch.no_grad()
def separate_file(model: Separator, input_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Separate one file; returns the written paths by source name."""
    require_thesis_setting(model_setting(model), "make separate", type(model).__name__, stft=False)
    mono, rate = read_audio(input_path)
    if rate != model.rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=model.rate, res_type=RESAMPLER)
    mixture = torch.from_numpy(np.ascontiguousarray(mono)).to(model.device)
    vocals = model.separate_vocals(mixture).cpu().numpy()
    estimates = {"vocals": vocals, "accompaniment": mono - vocals}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, signal in estimates.items():
        if rate != model.rate:
            signal = librosa.resample(
                signal, orig_sr=model.rate, target_sr=rate, res_type=RESAMPLER
            )
        written[name] = out / f"{Path(input_path).stem}_{name}.wav"
        sf.write(written[name], signal.astype(np.float32), rate, subtype="FLOAT")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="audio file (wav, flac, ogg, ...)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint of a trained run")
    source.add_argument("--model", help="an exported model (.onnx or TorchScript .pt)")
    parser.add_argument("--out", default="separated", help="output folder")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="what runs --model (default: by its suffix, .onnx -> onnxruntime, .pt -> "
        "torchscript; openvino runs .onnx files, extra 'openvino')",
    )
    args = parser.parse_args(argv)
    if args.runtime != "auto" and args.model is None:
        parser.error("--runtime applies to --model (an exported model), not to --checkpoint")
    try:
        if args.model is not None:
            written = stream_file(args.model, args.input, args.out, args.runtime)
        else:
            # from the checkpoint's hyper-parameters: refused before the model is built
            setting = checkpoint_setting(args.checkpoint)
            require_thesis_setting(setting, "make separate", args.checkpoint, stft=False)
            written = separate_file(load_separator(args.checkpoint), args.input, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
