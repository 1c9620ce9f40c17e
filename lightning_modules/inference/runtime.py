"""Run an exported spectral pipeline (``export.py``; names and metadata in ``graph.py``): ONNX
Runtime, OpenVINO or TorchScript.

``load_exported(path, threads, runtime)`` returns a callable ``(B, bins, frames) float32 array ->
(B, bins, frames) array`` with the export's metadata in ``.info``. ``runtime`` ``"auto"`` picks by
suffix (``.onnx`` -> ONNX Runtime, else TorchScript); ``"openvino"`` runs the same ``.onnx`` file
in OpenVINO (the optional extra ``openvino``), which reads the ONNX graph and its metadata itself.
Threads are set per model: ONNX Runtime's intra-op pool through ``SessionOptions`` (one session,
sequential execution), OpenVINO's CPU plugin through ``INFERENCE_NUM_THREADS`` (one stream,
latency hint, f32, no core pinning), TorchScript through ``torch.set_num_threads``
(process-wide, see ``torch_threads``). With one thread, ONNX Runtime and OpenVINO compute in the
calling thread (its CPU time is the whole computation; ``tests/test_openvino.py`` checks this).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lightning_modules.inference.graph import INPUT_NAME, METADATA_KEY, ExportInfo


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads for a block of code, restored afterwards: the setting is
    process-wide and also changes batched linalg elsewhere (evaluation/bss.py's note)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class OnnxModel:
    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ValueError(f"cannot load {path} as an ONNX model: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if metadata is None:
            raise ValueError(
                f"{path} was not written by lightning_modules.inference.export (no metadata)"
            )
        self.info = ExportInfo.from_json(metadata, str(path))
        self.threads = threads
        self.path = path

    def __call__(self, magnitude: np.ndarray) -> np.ndarray:
        feed = {INPUT_NAME: np.ascontiguousarray(magnitude, dtype=np.float32)}
        return self.session.run(None, feed)[0]


class OpenVinoModel:
    """An exported ``.onnx`` file in OpenVINO's CPU plugin: f32 (no bf16 down-cast on CPUs that
    have it, so the outputs stay within the export check's tolerance), one stream, the latency
    hint, ``threads`` inference threads, and no pinning of threads to cores (the machine is
    shared with the other runtimes of a benchmark)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        ov = import_openvino(str(path))
        if path.suffix != ".onnx":
            raise ValueError(
                f"{path}: the OpenVINO runtime runs the .onnx export (make export FORMAT=onnx)"
            )
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # OpenVINO raises its own GeneralFailure types
            raise ValueError(f"cannot load {path} as an ONNX model in OpenVINO: {error}") from error
        key = ["framework", METADATA_KEY]  # where OpenVINO keeps ONNX metadata_props
        if not model.has_rt_info(key):
            raise ValueError(
                f"{path} was not written by lightning_modules.inference.export (no metadata)"
            )
        self.info = ExportInfo.from_json(model.get_rt_info(key).astype(str), str(path))
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.threads = threads
        self.path = path

    def __call__(self, magnitude: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(magnitude, dtype=np.float32)
        self.request.infer({0: feed})
        return self.request.get_output_tensor(0).data.copy()


def import_openvino(where: str):
    """The ``openvino`` module, or a ValueError that names the file and the extra to install."""
    try:
        import openvino
    except ImportError as error:
        raise ValueError(
            f"{where}: RUNTIME=openvino needs OpenVINO: pip install -e '.[openvino]' ({error})"
        ) from error
    return openvino


class TorchScriptModel:
    def __init__(self, path: Path, threads: int = 1) -> None:
        files = {METADATA_KEY: ""}
        try:
            self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        except Exception as error:  # torch raises RuntimeError/ValueError for foreign files
            raise ValueError(f"cannot load {path} as a TorchScript model: {error}") from error
        if not files[METADATA_KEY]:
            raise ValueError(
                f"{path} was not written by lightning_modules.inference.export (no metadata)"
            )
        self.info = ExportInfo.from_json(files[METADATA_KEY], str(path))
        self.threads = threads
        self.path = path

    def __call__(self, magnitude: np.ndarray) -> np.ndarray:
        with torch_threads(self.threads), torch.inference_mode():
            return self.module(torch.from_numpy(np.asarray(magnitude, dtype=np.float32))).numpy()


#: ``runtime`` values of ``load_exported`` (``make separate ... RUNTIME=...``).
RUNTIMES = ("auto", "onnxruntime", "openvino", "torchscript")
ExportedModel = OnnxModel | OpenVinoModel | TorchScriptModel


def load_exported(path: str | Path, threads: int = 1, runtime: str = "auto") -> ExportedModel:
    """An exported model in ``runtime``; ``"auto"``: by its suffix, ``.onnx`` -> ONNX Runtime,
    else TorchScript. An ONNX runtime asked for a TorchScript file (or the reverse) is refused."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if runtime == "auto":
        runtime = "onnxruntime" if path.suffix == ".onnx" else "torchscript"
    if (runtime == "torchscript") == (path.suffix == ".onnx"):
        raise ValueError(
            f"{path}: runtime {runtime} runs "
            f"{'TorchScript (.pt) files' if runtime == 'torchscript' else '.onnx files'}"
        )
    if runtime == "openvino":
        return OpenVinoModel(path, threads)
    if runtime == "onnxruntime":
        return OnnxModel(path, threads)
    return TorchScriptModel(path, threads)
