"""Run an exported spectral pipeline (``export.py``; names and metadata in ``graph.py``): ONNX
Runtime or TorchScript.

``load_exported(path, threads)`` returns a callable ``(B, bins, frames) float32 array ->
(B, bins, frames) array`` with the export's metadata in ``.info``. Threads are set per model:
ONNX Runtime's intra-op pool through ``SessionOptions`` (one session, sequential execution),
TorchScript through ``torch.set_num_threads`` (process-wide, see ``torch_threads``).
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


def load_exported(path: str | Path, threads: int = 1) -> OnnxModel | TorchScriptModel:
    """An exported model by its suffix: ``.onnx`` -> ONNX Runtime, else TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if path.suffix == ".onnx":
        return OnnxModel(path, threads)
    return TorchScriptModel(path, threads)
