"""What an exported graph is, for those who write it (``export``) and those who run it
(``runtime``, ``stream``): its input and output names and the metadata stored inside the file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from datamodules.conventions import HOP, N_FFT, STFTConfig

METADATA_KEY = "mss_export"  # ONNX metadata_props key / TorchScript extra file name
INPUT_NAME, OUTPUT_NAME = "mixture_magnitude", "target_magnitude"


@dataclass
class ExportInfo:
    """What a runtime needs to use an exported graph, stored inside the exported file.

    The STFT fields and ``channels`` describe the signal the graph was made for. Exports are
    only ever written for the thesis's setting (``support.require_thesis_setting``); the fields
    are stored anyway so that a runtime refuses a file that says otherwise instead of framing it
    with the wrong STFT (files written before they existed read as the thesis's defaults)."""

    rate: int
    frames: int
    target: str  # "vocals", or "accompaniment" (vocals = mixture - estimate)
    n_fft: int = N_FFT
    hop: int = HOP
    bins: int = N_FFT // 2
    parameters: int = 0
    folded_batchnorms: list[str] = field(default_factory=list)
    pruned: bool = False
    source: str = ""
    win_length: int | None = None
    window: str = "hann"
    keep_dc: bool = False
    channels: int = 1

    @property
    def stft(self) -> STFTConfig:
        return STFTConfig(self.n_fft, self.hop, self.win_length, self.window, self.keep_dc)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, where: str) -> ExportInfo:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: unreadable export metadata: {error}") from error
