"""Peer models for the latency benchmark: what a user would run instead of the thesis's model.

``OpenUnmix`` reimplements the published Open-Unmix network (Stöter et al., JOSS 2019;
``openunmix.model.OpenUnmix``, not a dependency) as a plain ``nn.Module``, with the UMX-HQ
shapes (``umxhq``: one network per target, 44.1 kHz, STFT 4096 / hop 1024, 2049 bins, the
input cropped to the 1487 bins below 16 kHz, stereo, hidden size 512, three bidirectional LSTM
layers): 8,893,348 parameters per target, the published "8.9 M". The benchmark times one target
untrained (latency does not depend on the weights) on blocks of the same 8 frames as ours,
which carry 8 x 1024 samples = 186 ms of new audio at 44.1 kHz against our 128 ms.

``openunmix_pipeline`` returns the network and the ``ExportInfo`` that lets the suite's own
``export_onnx`` / ``export_torchscript`` and runtimes handle it: input and output
``(1, 2, 2049, frames)`` magnitudes (the network's output is already the masked magnitude,
``relu(x) * mix`` as in Open-Unmix).
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.inference.graph import ExportInfo

#: UMX-HQ (``openunmix.umxhq``): 44.1 kHz, n_fft 4096, hop 1024, bandwidth 16 kHz, stereo.
UMXHQ = {
    "rate": 44100,
    "n_fft": 4096,
    "hop": 1024,
    "bandwidth": 16000,
    "channels": 2,
    "hidden": 512,
    "layers": 3,
}
#: Parameters of one UMX-HQ target network (the published model card's 8.9 M).
UMXHQ_PARAMETERS = 8_893_348


def max_bin(rate: int, n_fft: int, bandwidth: float) -> int:
    """Open-Unmix's ``bandwidth_to_max_bin``: bins whose centre frequency is at most
    ``bandwidth`` Hz, the first bin above it included (1487 for UMX-HQ)."""
    frequencies = torch.linspace(0, rate / 2, n_fft // 2 + 1)
    return int(torch.nonzero(frequencies <= bandwidth).max()) + 1


class OpenUnmix(nn.Module):
    """Open-Unmix for one target: ``(B, channels, bins, frames)`` mixture magnitude ->
    the target's magnitude of the same shape.

    Crop to ``max_bin`` bins, input mean and scale, a linear layer over channels x bins to
    ``hidden`` (no bias) with BatchNorm and tanh, a ``layers``-deep bidirectional LSTM of
    ``hidden / 2`` units per direction, its output concatenated with its input (skip), two
    linear layers with BatchNorm (ReLU between) back to channels x all bins, output scale and
    mean, ReLU, times the mixture."""

    def __init__(
        self,
        bins: int = UMXHQ["n_fft"] // 2 + 1,
        channels: int = UMXHQ["channels"],
        hidden: int = UMXHQ["hidden"],
        layers: int = UMXHQ["layers"],
        max_bins: int | None = None,
    ) -> None:
        super().__init__()
        self.bins, self.channels, self.hidden = bins, channels, hidden
        self.max_bin = max_bins or bins
        self.input_mean = nn.Parameter(torch.zeros(self.max_bin))
        self.input_scale = nn.Parameter(torch.ones(self.max_bin))
        self.fc1 = nn.Linear(self.max_bin * channels, hidden, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.lstm = nn.LSTM(
            input_size=hidden,
            hidden_size=hidden // 2,
            num_layers=layers,
            bidirectional=True,
            batch_first=False,
            dropout=0.4 if layers > 1 else 0.0,
        )
        self.fc2 = nn.Linear(hidden * 2, hidden, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.fc3 = nn.Linear(hidden, bins * channels, bias=False)
        self.bn3 = nn.BatchNorm1d(bins * channels)
        self.output_scale = nn.Parameter(torch.ones(bins))
        self.output_mean = nn.Parameter(torch.ones(bins))

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        batch, channels, bins, frames = mixture.shape
        mix = mixture.permute(3, 0, 1, 2)  # (frames, batch, channels, bins), as Open-Unmix
        x = (mix[..., : self.max_bin] + self.input_mean) * self.input_scale
        x = self.bn1(self.fc1(x.reshape(-1, channels * self.max_bin)))
        x = torch.tanh(x.reshape(frames, batch, self.hidden))
        x = torch.cat([x, self.lstm(x)[0]], -1)
        x = torch.relu(self.bn2(self.fc2(x.reshape(-1, x.shape[-1]))))
        x = self.bn3(self.fc3(x)).reshape(frames, batch, channels, bins)
        x = torch.relu(x * self.output_scale + self.output_mean) * mix
        return x.permute(1, 2, 3, 0)


def openunmix_pipeline(frames: int = 8, seed: int = 0) -> tuple[OpenUnmix, ExportInfo]:
    """UMX-HQ, one target, untrained (seed ``seed``), in eval mode, and its export metadata."""
    torch.manual_seed(seed)
    bins = UMXHQ["n_fft"] // 2 + 1
    net = OpenUnmix(
        bins=bins,
        channels=UMXHQ["channels"],
        hidden=UMXHQ["hidden"],
        layers=UMXHQ["layers"],
        max_bins=max_bin(UMXHQ["rate"], UMXHQ["n_fft"], UMXHQ["bandwidth"]),
    ).eval()
    info = ExportInfo(
        rate=UMXHQ["rate"],
        frames=frames,
        target="vocals",
        n_fft=UMXHQ["n_fft"],
        hop=UMXHQ["hop"],
        bins=bins,
        parameters=sum(p.numel() for p in net.parameters()),
        source="Open-Unmix UMX-HQ (lightning_modules/inference/peers.py), untrained",
        channels=UMXHQ["channels"],
    )
    return net, info
