"""OpenVINO as a runtime of the ONNX export (extra ``openvino``): the same outputs as the PyTorch
model (the export check's 1e-4), the export's metadata read from the ONNX file, one thread in
the calling thread, ``make separate ... RUNTIME=openvino``, and the refusals. The tests that
run OpenVINO skip, saying why, when it is not installed; the refusals run either way."""

from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from lightning_modules.inference.export import TOLERANCE, check_export, export
from lightning_modules.inference.graph import METADATA_KEY
from lightning_modules.inference.runtime import load_exported
from lightning_modules.inference.separate import main as separate_main
from tests.exported_models import tiny_final_separator, tiny_separator

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="OpenVINO is not installed (pip install -e '.[openvino]')",
)
RATE = 16000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    separator = tiny_separator(rate=RATE)
    folder = tmp_path_factory.mktemp("export")
    onnx_path, _ = export(separator, folder / "model.onnx", "onnx")
    script_path, _ = export(separator, folder / "model.pt", "torchscript")
    return separator, onnx_path, script_path


@needs_openvino
@pytest.mark.parametrize("kind", ["baseline", "mel", "mel-pruned"])
def test_openvino_runs_the_onnx_export_as_the_pytorch_model(tmp_path, kind: str) -> None:
    separator = tiny_separator() if kind == "baseline" else tiny_final_separator(kind != "mel")
    path, info = export(separator, tmp_path / "model.onnx", "onnx")
    assert check_export(separator, path, info, runtime="openvino") <= TOLERANCE

    model = load_exported(path, threads=1, runtime="openvino")
    assert model.info == load_exported(path).info == info  # metadata from the same file
    magnitude = torch.rand(1, 1024, 8, generator=torch.Generator().manual_seed(5)) * 4
    with torch.no_grad():
        expected = separator.estimate_magnitude(magnitude).numpy()
    got = model(magnitude.numpy())
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())
    assert np.abs(expected).max() > 0.1  # not a trivially zero model
    got_again = model(2 * magnitude.numpy())  # a second call is not the first call's buffer
    assert not np.allclose(got_again, got)


@needs_openvino
def test_a_wrong_graph_fails_the_check_in_openvino(exported, tmp_path) -> None:
    separator, path, _ = exported
    model = onnx.load(str(path))
    output = model.graph.output[0].name
    for node in model.graph.node:  # scale the graph's output by 1.01 through its last node
        node.output[:] = [f"{name}_raw" if name == output else name for name in node.output]
    scale = onnx.helper.make_tensor("scale", onnx.TensorProto.FLOAT, [], [1.01])
    model.graph.initializer.append(scale)
    model.graph.node.append(onnx.helper.make_node("Mul", [f"{output}_raw", "scale"], [output]))
    wrong = tmp_path / "wrong.onnx"
    onnx.save(model, str(wrong))
    info = load_exported(path).info
    with pytest.raises(ValueError, match=r"wrong\.onnx: .* in runtime openvino"):
        check_export(separator, wrong, info, runtime="openvino")


@needs_openvino
def test_one_openvino_thread_computes_in_the_calling_thread(tmp_path) -> None:
    """The benchmark reads the calling thread's CPU time: with one thread it must be all of
    the process's CPU time, not a worker's."""
    separator = tiny_final_separator()
    path, _ = export(separator, tmp_path / "model.onnx", "onnx")
    model = load_exported(path, threads=1, runtime="openvino")
    block = np.random.default_rng(0).random((1, 1024, 8), dtype=np.float32)
    for _ in range(5):
        model(block)
    thread, process = time.thread_time(), time.process_time()
    for _ in range(200):
        model(block)
    thread, process = time.thread_time() - thread, time.process_time() - process
    assert process > 0.02  # enough to measure
    assert thread >= 0.9 * process


@needs_openvino
def test_make_separate_with_runtime_openvino(exported, tmp_path, capsys) -> None:
    _, path, _ = exported
    t = np.arange(int(1.5 * RATE)) / RATE
    song = tmp_path / "song.wav"
    mixture = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.random.default_rng(0).standard_normal(
        t.size
    )
    sf.write(song, mixture.astype(np.float32), RATE)
    written = {}
    for runtime in ("onnxruntime", "openvino"):
        out = tmp_path / runtime
        args = ["--input", str(song), "--model", str(path), "--out", str(out)]
        assert separate_main([*args, "--runtime", runtime]) == 0
        written[runtime] = sf.read(out / "song_vocals.wav")[0]
    assert written["openvino"].shape == (t.size,)
    assert np.abs(written["openvino"]).max() > 1e-3
    np.testing.assert_allclose(written["openvino"], written["onnxruntime"], atol=1e-4)


def test_runtime_and_file_must_agree(exported) -> None:
    _, onnx_path, script_path = exported
    with pytest.raises(ValueError, match=r"model\.onnx: runtime torchscript runs TorchScript"):
        load_exported(onnx_path, runtime="torchscript")
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(ValueError, match=rf"model\.pt: runtime {runtime} runs \.onnx files"):
            load_exported(script_path, runtime=runtime)
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_exported(onnx_path, runtime="tensorrt")
    assert load_exported(script_path, runtime="auto").info == load_exported(onnx_path).info


def test_runtime_openvino_without_openvino_names_the_extra(exported, monkeypatch) -> None:
    _, path, _ = exported
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ValueError, match=r"model\.onnx: RUNTIME=openvino needs OpenVINO: .*"):
        load_exported(path, runtime="openvino")


@needs_openvino
def test_openvino_refuses_an_onnx_file_without_the_metadata(exported, tmp_path) -> None:
    _, path, _ = exported
    model = onnx.load(str(path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ValueError, match=r"bare\.onnx was not written by .*export"):
        load_exported(bare, runtime="openvino")
    assert METADATA_KEY not in {p.key for p in model.metadata_props}


def test_runtime_is_an_option_of_exported_models_only(exported, tmp_path, capsys) -> None:
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros(RATE, dtype=np.float32), RATE)
    with pytest.raises(SystemExit) as exit_info:
        separate_main(["--input", str(song), "--checkpoint", "x.ckpt", "--runtime", "openvino"])
    assert exit_info.value.code == 2
    assert "--runtime applies to --model" in capsys.readouterr().err
