"""Counting (``inference/stats.py``): parameters without a forward pass, MACs of recurrent
layers, attention and linear layers on hand-counted small networks, the row's own input shape,
and the thesis's numbers unchanged.

Every expected MAC count below is worked out by hand in the comment beside it from the layer's
equations, never by calling the code's own formula.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lightning_modules.inference import stats
from lightning_modules.inference.stats import (
    count_call_macs,
    count_macs,
    count_parameters,
    network_stats,
    trained_network_stats,
)
from lightning_modules.nets import MMDenseNet
from lightning_modules.separators.spectrogram import SpectrogramSeparator

EXPERIMENTS = "experiments/mmdensenet"
BOTH_PATHS = pytest.mark.parametrize("meta", [True, False], ids=["meta", "real"])


# --- recurrent layers --------------------------------------------------------------------------


@BOTH_PATHS
def test_lstm_macs_by_hand(meta: bool) -> None:
    lstm = nn.LSTM(3, 2, num_layers=2, bidirectional=True, batch_first=True)
    # Per time step, per direction: 4 gates x (input x hidden + hidden x hidden).
    #   layer 0: 4 x (3 x 2 + 2 x 2) = 40
    #   layer 1 sees both directions' outputs (2 + 2 = 4 inputs): 4 x (4 x 2 + 2 x 2) = 48
    #   both directions: 2 x (40 + 48) = 176 per step; 2 sequences x 5 steps = 10 steps
    assert count_call_macs(lstm, torch.zeros(2, 5, 3), meta=meta) == 1760


class EquationLSTM(nn.Module):
    """One LSTM layer written out from its equations: the gates' input and hidden products as
    two linear layers per step (what the counter does see), the rest element-wise."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_product = nn.Linear(inputs, 4 * hidden)
        self.hidden_product = nn.Linear(hidden, 4 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            i, f, g, o = (self.input_product(x[:, t]) + self.hidden_product(h)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return h


@BOTH_PATHS
def test_lstm_convention_is_the_matmuls_of_its_equations(meta: bool) -> None:
    # The same layer, once as nn.LSTM (a fused kernel on CPU, counted analytically) and once as
    # plain linear layers that the flop counter sees: the convention agrees with the equations.
    x = torch.zeros(3, 6, 5)
    lstm = count_call_macs(nn.LSTM(5, 7, batch_first=True), x, meta=meta)
    assert lstm == count_call_macs(EquationLSTM(5, 7), x, meta=meta)


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True)
        return self.lstm(packed)[0].data


# torch on CPU falls back from oneDNN for projected LSTMs, and says so
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")
@BOTH_PATHS
@pytest.mark.parametrize(
    ("module", "x", "expected"),
    [
        # 3 gates x (3 x 2 + 2 x 2) = 30 per step, 4 steps
        (nn.GRU(3, 2, batch_first=True), torch.zeros(1, 4, 3), 120),
        # unbatched (4 steps, 3 inputs); 1 x (3 x 2 + 2 x 2) = 10 per step and direction
        (nn.RNN(3, 2, bidirectional=True), torch.zeros(4, 3), 80),
        # hidden 4, projected to 2: W_ih 16 x 3 = 48, W_hh 16 x 2 = 32, W_hr 2 x 4 = 8 -> 88
        (nn.LSTM(3, 4, proj_size=2, batch_first=True), torch.zeros(1, 5, 3), 440),
        # one step of 2 rows: 2 x 4 x (3 x 2 + 2 x 2)
        (nn.LSTMCell(3, 2), torch.zeros(2, 3), 80),
        # packed lengths 5 and 3: 8 real steps (no padding) x 4 x (3 x 2 + 2 x 2)
        (Packed(), torch.zeros(2, 5, 3), 320),
    ],
    ids=["gru", "rnn-unbatched", "lstm-proj", "lstm-cell", "packed"],
)
def test_other_recurrent_layers_by_hand(
    module: nn.Module, x: torch.Tensor, expected: int, meta: bool
) -> None:
    assert count_call_macs(module, x, meta=meta) == expected


class BLSTMChimeraSpec(nn.Module):
    """The BLSTM chimera net of the chimera spec (B.2, Table 2): 4 BLSTM layers of 500 per
    direction on 300 inputs, Z = Linear(1000 -> 150 x 20), MI head = per-bin D -> C layers."""

    def __init__(self, device: str = "meta") -> None:
        super().__init__()
        self.blstm = nn.LSTM(300, 500, 4, batch_first=True, bidirectional=True, device=device)
        self.z = nn.Linear(1000, 150 * 20, device=device)
        self.mi_weight = nn.Parameter(torch.zeros(150, 20, 2, device=device))
        self.mi_bias = nn.Parameter(torch.zeros(150, 2, device=device))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.z(self.blstm(features)[0]).unflatten(-1, (150, 20))
        return torch.einsum("btfd,fdc->btfc", z, self.mi_weight) + self.mi_bias

    def example_inputs(self, frames: int, bins: int, channels: int) -> tuple[torch.Tensor]:
        return (torch.zeros(1, frames, 300),)  # 150 Mel bins + their deltas per frame


def test_blstm_chimera_net_matches_the_spec() -> None:
    # Built on the meta device: 24 M parameters counted and 2.4 G MACs traced, nothing
    # allocated or computed. The spec's numbers (B.8): 24,241,300 parameters; at 100 frames
    # 2.120 G (LSTMs) + 0.300 G (Z: 100 x 1000 x 3000) + 0.0006 G (MI: 100 x 150 x 20 x 2).
    net = BLSTMChimeraSpec()
    assert count_parameters(net) == 24_241_300
    assert count_macs(net, 100) == 2_420_600_000


# --- attention, linear and convolution ---------------------------------------------------------


class Attention(nn.Module):
    """Self-attention over 3 tokens of width 4, 2 heads of width 2, in several spellings."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.q, self.k, self.v, self.out = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = [p(x).unflatten(-1, (2, 2)).transpose(1, 2) for p in (self.q, self.k, self.v)]
        q, k, v = heads  # (1, 2 heads, 3 tokens, 2)
        if self.how == "sdpa":
            a = nn.functional.scaled_dot_product_attention(q, k, v)
        elif self.how == "matmul":
            a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / 2**0.5, -1) @ v
        else:  # bmm over (batch x heads)
            q, k, v = (t.flatten(0, 1) for t in (q, k, v))
            a = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1), v)
            a = a.unflatten(0, (1, 2))
        return self.out(a.transpose(1, 2).flatten(2))


class TorchMultiheadAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eval, no grad, batch first, self-attention: CPU takes the fused fast path
        return self.attention(x, x, x, need_weights=False)[0]


# Hand count for 3 tokens of width 4, 2 heads of width 2:
#   q, k, v projections: 3 x (3 tokens x 4 x 4) = 144
#   Q K^T per head: (3 x 2) @ (2 x 3) = 3 x 3 x 2 = 18; 2 heads: 36
#   A V per head:   (3 x 3) @ (3 x 2) = 3 x 2 x 3 = 18; 2 heads: 36
#   output projection: 3 x 4 x 4 = 48                                    -> 264
ATTENTION_MACS = 264


@BOTH_PATHS
@pytest.mark.parametrize("how", ["sdpa", "matmul", "bmm", "nn.MultiheadAttention"])
def test_attention_block_by_hand(how: str, meta: bool) -> None:
    block = TorchMultiheadAttention() if how == "nn.MultiheadAttention" else Attention(how)
    assert count_call_macs(block, torch.zeros(1, 3, 4), meta=meta) == ATTENTION_MACS


class Convolutions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.up = nn.ConvTranspose2d(3, 1, 2, stride=2)
        self.linear = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.up(self.conv(x)).flatten(1)[:, :10])


@BOTH_PATHS
def test_convolutions_and_linear_layers_by_hand(meta: bool) -> None:
    # conv: 3 x 4 x 5 = 60 outputs, each 2 channels x 3 x 3 = 18 MACs      -> 1080
    # transposed conv: 3 x 4 x 5 = 60 inputs, each to 1 map x 2 x 2 taps   ->  240
    # linear (bias not counted): 10 x 2                                    ->   20
    assert count_call_macs(Convolutions(), torch.zeros(1, 2, 4, 5), meta=meta) == 1340


def test_thesis_counts_are_unchanged() -> None:
    # README and thesis tables: 268,929 parameters, 3.838 G MACs at 64 frames, 0.480 G at 8;
    # the final Mel-MDenseNet-DC-NoDSConvs-BC 179,597 and 75.142 M.
    baseline = yaml.safe_load(Path(f"{EXPERIMENTS}/baseline.yaml").read_text())
    assert network_stats(baseline, 64) == {"params": 268_929, "macs": 3_837_521_920}
    assert network_stats(baseline, 8) == {"params": 268_929, "macs": 479_690_240}
    final = yaml.safe_load(Path(f"{EXPERIMENTS}/mel_mdensenet_dc_nodsconvs_bc.yaml").read_text())
    assert network_stats(final, 8) == {"params": 179_597, "macs": 75_141_632}
    # the shape-only count and a real forward pass agree on the thesis's network
    x = torch.zeros(1, 1, 1024, 8)
    assert count_call_macs(MMDenseNet(), x, meta=False) == 479_690_240


# --- parameters without a forward pass, MACs only when asked -----------------------------------


class SideInformed(nn.Module):
    """Two inputs, as the weakly-informed net: a spectrogram and side information."""

    def __init__(self) -> None:
        super().__init__()
        self.mixture = nn.Conv2d(1, 2, 1)  # 2 weights + 2 biases
        self.side = nn.Linear(1, 3)  # 3 weights + 3 biases

    def forward(self, mixture: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return self.mixture(mixture).mean() + self.side(side).mean()


class SideInformedWithInputs(SideInformed):
    def example_inputs(self, frames: int, bins: int, channels: int) -> tuple[torch.Tensor, ...]:
        return torch.zeros(1, channels, bins, frames), torch.zeros(1, frames, 1)


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a parameter count must not run the network")


def _row(net: str, data: dict | None = None, **init_args: object) -> dict:
    config = {"model": {"init_args": {"net": {"class_path": f"tests.test_counting.{net}"}}}}
    config["model"]["init_args"].update(init_args)
    return {**config, "data": data} if data is not None else config


def test_parameters_need_no_forward_pass() -> None:
    assert network_stats(_row("Exploding"), macs=False) == {"params": 7}
    assert network_stats(_row("SideInformed"), macs=False) == {"params": 10}
    with pytest.raises(AssertionError, match="must not run"):
        network_stats(_row("Exploding"), 8)  # MACs do run it (on meta tensors)


def test_a_two_input_network_needs_its_example_inputs_for_macs() -> None:
    with pytest.raises(ValueError, match=r"takes 2 inputs.*example_inputs"):
        network_stats(_row("SideInformed"), 4)
    # 1x1 conv: 6 bins x 4 frames x 2 maps = 48; linear: 4 frames x 1 x 3 = 12
    row = _row("SideInformedWithInputs", {"stft": {"n_fft": 12, "hop": 3}})
    assert network_stats(row, 4) == {"params": 10, "macs": 60}


def test_lazy_parameters_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="lazy parameter"):
        count_parameters(nn.LazyLinear(3))


class Pointwise(nn.Module):
    """One 1x1 conv, channels -> 1 map, no bias: MACs = channels x bins x frames."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


SAMSNET_STFT = {"n_fft": 4096, "hop": 1024, "window": "hamming", "keep_dc": True}


@pytest.mark.parametrize(
    ("data", "mel_bins", "channels", "expected"),
    [
        (None, None, 1, 1024 * 3),  # thesis: 2048-point STFT without DC -> 1024 bins
        ({"stft": {"hop": 256}}, None, 1, 1024 * 3),  # partial: the rest are the thesis's
        ({"stft": {"n_fft": 1024, "keep_dc": True}}, None, 1, 513 * 3),  # weakly informed
        ({"stft": {"n_fft": 1024}}, 128, 1, 128 * 3),  # Mel front end: its bins
        # Sams-Net: 4096 Hamming with DC, stereo: 2049 bins x 3 frames x 2 channels
        ({"stft": SAMSNET_STFT, "channels": 2}, None, 2, 2049 * 3 * 2),
    ],
    ids=["thesis", "partial", "513-bins", "mel", "samsnet-stereo"],
)
def test_macs_use_the_rows_own_input_shape(
    data: dict | None, mel_bins: int | None, channels: int, expected: int
) -> None:
    row = _row("Pointwise", data, **({"mel_bins": mel_bins} if mel_bins else {}))
    row["model"]["init_args"]["net"]["init_args"] = {"channels": channels}
    assert network_stats(row, 3)["macs"] == expected


def test_trained_stats_count_macs_only_when_asked_with_the_models_own_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a model of a 1024-point STFT with its DC bin: 513 bins
    model = SpectrogramSeparator(Pointwise(), stft={"n_fft": 1024, "keep_dc": True})
    monkeypatch.setattr(stats, "load_separator", lambda checkpoint: model)
    assert trained_network_stats("best.ckpt", 4) == {"params": 1, "sparsity": 0.0, "macs": 513 * 4}

    def no_forward(*args: object, **kwargs: object) -> int:
        raise AssertionError("counted MACs although not asked to")

    monkeypatch.setattr(stats, "count_call_macs", no_forward)
    assert trained_network_stats("best.ckpt", macs=False) == {"params": 1, "sparsity": 0.0}
