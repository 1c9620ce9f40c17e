"""Export a trained separator's spectral pipeline as one graph (TorchScript or ONNX).

``python -m lightning_modules.inference.export --checkpoint best.ckpt --format onnx
[--out model.onnx]`` (or ``make export CKPT=... FORMAT=onnx|torchscript [OUT=...]``).

The exported graph maps one block of mixture magnitude frames (batch 1) to the vocal (or the
model's target's) magnitude estimate, ``(1, 1024, frames) -> (1, 1024, frames)``, and holds
everything between the STFT and the iSTFT: input scaling and normalisation, the Mel
projection of Mel models, the network, the output gain, the mask (and its interpolation back
to linear bins) applied to the mixture magnitude. It is the separator's own
``estimate_magnitude``, traced, so it cannot drift from what the model computes in PyTorch.
STFT and iSTFT stay outside (in the streaming loop), where the phase and the overlap-add live.

Before export the network is made an inference network:
  1. training-only heads dropped (``inference_net()`` of multi-head nets);
  2. PSP structure parameters fused and pruned channels removed (``remove_pruned_channels``),
     when the net has parameterized structured pruning;
  3. every BatchNorm that directly follows a conv folded into it (``nets/fold.py``: the
     bottleneck layers' Conv1x1 -> BN; the baseline's pre-activation BNs cannot be folded).
The export is checked against the PyTorch model on random input before it is written: it is
written beside the output under a temporary name, checked, then renamed, so a failed export or
check never deletes or truncates an existing output file.

Only the thesis's setting is exported: the default ``STFTConfig``, mono, one estimated target
(``support.py``); a model (or checkpoint) with another STFT, stereo input or several targets
is refused with an error that names what is unsupported, because the streaming loop that runs
the graph frames and writes exactly that setting.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datamodules.conventions import N_FFT
from datamodules.files import atomic_path
from lightning_modules.inference.graph import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ExportInfo
from lightning_modules.inference.runtime import load_exported
from lightning_modules.inference.support import (
    checkpoint_setting,
    model_setting,
    require_thesis_setting,
)
from lightning_modules.nets.fold import fold_batchnorm
from lightning_modules.nets.pruning import has_psp, remove_pruned_channels
from lightning_modules.separators.checkpoint import load_separator
from lightning_modules.separators.spectrogram import SpectrogramSeparator

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
#: An export whose output differs more than this from the PyTorch model is refused.
TOLERANCE = 1e-4


class SpectralPipeline(nn.Module):
    """``(B, bins, frames)`` mixture magnitude -> ``(B, bins, frames)`` target magnitude:
    the separator's ``estimate_magnitude`` with its network swapped for the inference net."""

    def __init__(self, separator: SpectrogramSeparator) -> None:
        super().__init__()
        self.separator = separator

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        return self.separator.estimate_magnitude(magnitude)


def remove_pruning(net: nn.Module) -> tuple[nn.Module, bool]:
    """Fuse PSP's structure parameters and drop pruned channels, when the net has PSP."""
    if not has_psp(net):
        return net, False
    return remove_pruned_channels(net), True


def _net_input(separator: SpectrogramSeparator, frames: int) -> torch.Tensor:
    """The tensor the network sees for a ``(1, bins, frames)`` magnitude (Mel models see
    fewer bins), captured with a hook so the separator's own front end decides."""
    seen: list[torch.Tensor] = []
    handle = separator.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            separator.estimate_magnitude(torch.rand(1, N_FFT // 2, frames))
    finally:
        handle.remove()
    return seen[0]


def inference_pipeline(
    separator: SpectrogramSeparator, frames: int | None = None, source: str = ""
) -> tuple[SpectralPipeline, ExportInfo]:
    """The exportable pipeline of ``separator`` (left untouched) and its metadata."""
    # First: a stereo or several-target model is refused for that reason, whatever its class.
    setting = model_setting(separator)
    require_thesis_setting(setting, "export", source or type(separator).__name__)
    if not isinstance(separator, SpectrogramSeparator):
        raise ValueError(
            f"{source or type(separator).__name__}: only spectrogram/mask models "
            f"(SpectrogramSeparator and subclasses) can be exported"
        )
    frames = frames or separator.test_context  # the context it separates full tracks with
    model = copy.deepcopy(separator).eval()  # the caller's model keeps its heads and BNs
    # Lightning's switch for tracing a module without a Trainer (its properties then return
    # None instead of raising, which the tracers' attribute scans need).
    model._jit_is_scripting = True
    net = model.net
    # Joint masks combine both heads (multitask.py), so they keep the full net.
    if getattr(model, "joint_mask", False) and has_psp(net):
        raise ValueError(f"{source}: pruned channels of a joint-mask net cannot be removed")
    if hasattr(net, "inference_net") and not getattr(model, "joint_mask", False):
        net = net.inference_net()
    net, pruned = remove_pruning(net)
    model.net = net
    net, folded = fold_batchnorm(net, _net_input(model, frames))
    model.net = net
    info = ExportInfo(
        rate=int(separator.rate),
        frames=int(frames),
        target="vocals" if model.target_index == 0 else "accompaniment",
        parameters=sum(p.numel() for p in net.parameters()),
        folded_batchnorms=folded,
        pruned=pruned,
        source=source,
        n_fft=setting.stft.n_fft,
        hop=setting.stft.hop,
        bins=setting.stft.bins,
        win_length=setting.stft.win_length,
        window=setting.stft.window,
        keep_dc=setting.stft.keep_dc,
        channels=setting.channels,
    )
    return SpectralPipeline(model).eval(), info


def export_torchscript(pipeline: SpectralPipeline, info: ExportInfo, path: Path) -> Path:
    """Trace (the pipeline has no data-dependent control flow) and save with the metadata."""
    example = example_block(info)
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks read sizes as Python values: constants of the trace, which is right
        # for a graph with fixed frames per block
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(pipeline, example)
    torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: info.to_json()})
    return path


def export_onnx(pipeline: SpectralPipeline, info: ExportInfo, path: Path) -> Path:
    """ONNX through ``torch.export`` (the dynamo exporter; the thesis's TorchScript-based
    exporter is deprecated in this torch), metadata in metadata_props. Batch 1, as the
    streaming loop runs it (a dynamic batch axis came out pinned to 1 for Mel models)."""
    import onnx

    # the exporter lists torchvision ops it cannot find: not used here
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = example_block(info)
    with torch.no_grad(), warnings.catch_warnings():
        # torch.export's note on nn.LSTM's flattened weights (the benchmark's Open-Unmix peer)
        warnings.filterwarnings("ignore", message="The tensor attributes .* during export")
        program = torch.onnx.export(
            pipeline,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    onnx.save(model, str(path))
    return path


def export(
    separator: SpectrogramSeparator,
    path: str | Path,
    fmt: str,
    frames: int | None = None,
    source: str = "",
) -> tuple[Path, ExportInfo]:
    """Build the inference pipeline, export it, and check it against ``separator``.

    The export is written beside ``path`` under a temporary name, checked there, and only then
    renamed to ``path``: a failed export or check leaves an existing file at ``path`` as it was
    (and no temporary file behind).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    pipeline, info = inference_pipeline(separator, frames, source)
    # the temporary name keeps the suffix: load_exported picks the runtime by it
    with atomic_path(path) as tmp:
        (export_onnx if fmt == "onnx" else export_torchscript)(pipeline, info, tmp)
        check_export(separator, tmp, info, name=path)
    return path, info


def example_block(info: ExportInfo, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random magnitude block of the export's shape: ``(1, bins, frames)``, or
    ``(1, channels, bins, frames)`` for a multichannel graph (the benchmark's peer model)."""
    channels = (info.channels,) if info.channels > 1 else ()
    return torch.rand(1, *channels, info.bins, info.frames, generator=generator)


def check_export(
    separator: SpectrogramSeparator,
    path: Path,
    info: ExportInfo,
    name: Path | None = None,
    runtime: str = "auto",
) -> float:
    """Largest |exported - PyTorch| on a random block, run in ``runtime`` (``load_exported``);
    raises ValueError beyond ``TOLERANCE`` relative to the output's scale (``name``: the file
    the message names, when ``path`` is a temporary one)."""
    magnitude = example_block(info, torch.Generator().manual_seed(0))
    was_training = separator.training
    separator.eval()
    with torch.no_grad():
        expected = separator.estimate_magnitude(magnitude).numpy()
    separator.train(was_training)
    return check_outputs(expected, magnitude.numpy(), path, runtime, name)


def check_outputs(
    expected: np.ndarray,
    magnitude: np.ndarray,
    path: Path,
    runtime: str = "auto",
    name: Path | None = None,
) -> float:
    """Largest |exported(magnitude) - expected|; ValueError beyond ``TOLERANCE`` relative to the
    output's scale, naming the file and the runtime."""
    got = load_exported(path, threads=1, runtime=runtime)(magnitude)
    error = float(abs(got - expected).max())
    scale = max(float(abs(expected).max()), 1.0)
    if not error <= TOLERANCE * scale:
        raise ValueError(
            f"{name or path}: the exported model differs from the PyTorch model by {error:.3g} "
            f"in runtime {runtime} (tolerance {TOLERANCE * scale:.3g}); not written"
        )
    return error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of a trained run")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", help="output file (default: next to the checkpoint)")
    parser.add_argument(
        "--frames", type=int, help="frames per block (default: the model's test context)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out or Path(args.checkpoint).with_suffix(SUFFIXES[args.format]))
    start = time.perf_counter()
    try:
        # from the checkpoint's hyper-parameters first: refused before any model is built
        require_thesis_setting(checkpoint_setting(args.checkpoint), "export", args.checkpoint)
        separator = load_separator(args.checkpoint)
        print(f"exporting {args.checkpoint} -> {out} ({args.format}) ...", flush=True)
        path, info = export(separator, out, args.format, args.frames, str(args.checkpoint))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {path}: {info.parameters:,} parameters, {info.frames} frames per block, "
        f"{len(info.folded_batchnorms)} BatchNorms folded, pruned: {info.pruned} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
