"""Split a song into vocals and accompaniment with a trained checkpoint or an exported model.

``python -m lightning_modules.separate --input song.wav --checkpoint best.ckpt --out DIR`` (or
``make separate IN=... CKPT=... OUT=...``) writes ``DIR/<song>_vocals.wav`` and
``DIR/<song>_accompaniment.wav`` at the input's sample rate (mono, as the models are).
``--model model.onnx`` (``make separate IN=... MODEL=...``) instead streams the song through an
exported model (``make export``) in blocks, as ``lightning_modules.stream`` does.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from datamodules.cache import RESAMPLER
from lightning_modules.separator import Separator


def load_separator(checkpoint: str | Path, map_location: str = "cpu") -> Separator:
    """Rebuild the exact LightningModule (and its network) a checkpoint was trained with.

    LightningCLI stores the module's class path and the network's config in the checkpoint;
    loading through the concrete class lets Lightning's instantiator rebuild both.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    class_path = hparams.get("_class_path")
    if class_path is None:
        raise ValueError(f"{path} was not written by the suite's LightningCLI (no _class_path)")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Separator)):
        raise ValueError(f"{path}: {class_path} is not a separation model")
    model = cls.load_from_checkpoint(path, map_location=map_location)
    return model.eval()


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 audio and its sample rate; a clear error for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise ValueError(f"cannot read {path} as audio: {error}") from error
    if audio.shape[0] == 0:
        raise ValueError(f"{path} holds no samples")
    if not np.isfinite(audio).all():
        raise ValueError(f"{path} contains NaN or inf samples")
    return audio.mean(axis=1), int(rate)


@torch.no_grad()
def separate_file(model: Separator, input_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Separate one file; returns the written paths by source name."""
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
    args = parser.parse_args(argv)
    try:
        if args.model is not None:
            from lightning_modules.stream import separate_file as stream_file

            written = stream_file(args.model, args.input, args.out)
        else:
            written = separate_file(load_separator(args.checkpoint), args.input, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
