"""The DAE mapping-functions paper (Mimilakis et al.; spec dae-nca.md, issue #15): training of
the per-frame DAE, MSS-DAE and SF models, and the neural couplings algorithm (NCA) at test.

Training (A.4): each STFT frame of the real mixture (the sum of the track's stems, unit gain:
``data.mixing: coherent``, ``context_frames: 1``) is one example; input and target are divided
by one per-frequency standard deviation of the training mixtures ("each frequency sub-band is
normalized to have a unit variance with respect to the time frames", no mean removal: A-3);
MSE against the normalised vocals; Adam; the learning rate halved after 2 epochs without
improvement of the training loss, training stopped after 4.

Test: museval on the full tracks as every separator (the network's output times the std, with
the mixture's phase), then the NCA (A.5) on consecutive segments of ``nca_segment_seconds`` of
each test track's most active excerpt: for every segment the couplings matrix C of the student
and compositional strategies, and the linear-composition and identity baselines, with TOD-R,
the SNR against the model's own output and against the true vocals. One record per segment and
mapping in the run's ``scores.json`` (``target`` = the mapping: student, compositional, linear,
identity; ``model`` holds the model's own SNR against the true vocals), read by the tables
``dae-1`` to ``dae-3``; the matrices of each track's first segment in ``nca/<track>.npz``.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn

from datamodules.activity import most_active_window
from datamodules.conventions import STFTConfig
from lightning_modules.evaluation.records import SCORES, write_records
from lightning_modules.evaluation.tod import snr_db, tod_r
from lightning_modules.nets.dae import FrameDAE
from lightning_modules.separators.separator import Separator
from lightning_modules.separators.spectrogram import SpectrogramSeparator, input_statistics

__all__ = [
    "MAPPINGS",
    "DAESeparator",
    "compositional_couplings",
    "fit_compositional",
    "fit_student",
    "linear_composition",
]

#: The mappings of a segment: the two NCA strategies and the two baselines (Tables 1-3).
MAPPINGS = ("student", "compositional", "linear", "identity")


# --- the neural couplings algorithm (pure torch) -----------------------------------------------


def _weights(net: FrameDAE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.weight.detach(), layer.bias.detach()) for layer in net.layers]


def linear_composition(net: FrameDAE) -> torch.Tensor:
    """Eqs. 11-13, biases neglected: C = W_L ... W_2 W_1 (PyTorch's (out, in) layout)."""
    couplings = None
    for weight, _ in _weights(net):
        couplings = weight if couplings is None else weight @ couplings
    assert couplings is not None
    return couplings


def compositional_couplings(
    layers: list[tuple[torch.Tensor, torch.Tensor]], free: list[torch.Tensor]
) -> torch.Tensor:
    """Eqs. 17-19 as the authors' ``MappingEstimator`` computes them: per layer i,
    Psi_i = ReLU((W_i + b_i) A_i^T) * W_i (the bias broadcast over the last axis: element (r, j)
    gets b_i[j]), and C = Psi_L ... Psi_1."""
    couplings = None
    for (weight, bias), a in zip(layers, free, strict=True):
        psi = torch.relu((weight + bias) @ a.T) * weight
        couplings = psi if couplings is None else psi @ couplings
    assert couplings is not None
    return couplings


def _xavier(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(n, n, generator=generator) * math.sqrt(2.0 / (n + n))


def fit_student(
    x: torch.Tensor,
    z: torch.Tensor,
    iterations: int,
    lr: float,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """The student strategy (eq. 15): C minimising ||Z - X C^T||_1 over a segment (X, Z: (T, N)),
    Adam on the whole segment, Xavier-normal start (or ``init``)."""
    generator = torch.Generator().manual_seed(seed)
    start = _xavier(x.shape[-1], generator) if init is None else init.detach().clone()
    couplings = nn.Parameter(start.to(x))
    optimizer = torch.optim.Adam([couplings], lr=lr)
    for _ in range(iterations):
        optimizer.zero_grad()
        (z - x @ couplings.T).abs().sum().backward()
        optimizer.step()
    return couplings.detach()


def fit_compositional(
    net: FrameDAE, x: torch.Tensor, z: torch.Tensor, iterations: int, lr: float, seed: int = 0
) -> torch.Tensor:
    """The compositional strategy: one free A_i per layer of ``net`` (whose weights stay
    frozen), fitted by Adam on ||Z - X C^T||_1; returns C. X C^T is computed through the chain
    (T N^2 per layer), C formed once at the end."""
    layers = _weights(net)
    generator = torch.Generator().manual_seed(seed)
    free = [nn.Parameter(_xavier(w.shape[1], generator).to(x)) for w, _ in layers]
    optimizer = torch.optim.Adam(free, lr=lr)
    for _ in range(iterations):
        optimizer.zero_grad()
        approximation = x
        for (weight, bias), a in zip(layers, free, strict=True):
            approximation = approximation @ (torch.relu((weight + bias) @ a.T) * weight).T
        (z - approximation).abs().sum().backward()
        optimizer.step()
    with torch.no_grad():
        return compositional_couplings(layers, [a.detach() for a in free])


# --- the LightningModule -----------------------------------------------------------------------


class DAESeparator(SpectrogramSeparator):
    """A per-frame DAE model (``nets.dae``) trained as the paper does, its NCA at test.

    Args:
        net: ``DAE``, ``MSSDAE`` or ``SkipFilteringDAE`` with ``bins`` = the STFT's bins.
        lr, betas: Adam (A.0: lr lost, proposal 1e-4; betas Kingma & Ba's).
        plateau_factor, plateau_patience: the learning rate halved when the monitored loss (the
            epoch's training loss without a validation split) has not improved for 2 epochs.
        stop_patience: training stops after this many epochs without improvement.
        nca_iterations, nca_lr: the NCA's Adam iterations and learning rate (both lost;
            proposals 600 and 1e-4, the reference code's defaults). A computing budget: a
            table's ``profile_overrides`` may lower it.
        nca_segment_seconds: the NCA's segment of adjacent frames ("3.1 seconds long").
        nca_excerpt_seconds: the most active stretch of each test track the segments are cut
            from (lost; proposal 30 s; ``datamodules.activity.most_active_window``).
        nca_max_segments: at most this many segments per track (None: all); a budget.
        tod_scale: the scale s of TOD-R, lost in our copy of the paper (it cancels in every
            comparison between models and strategies). None: N - 1, the number of
            off-diagonal entries per diagonal one, which the text's reason for s ("the norm is
            taken using far more matrix elements than the trace") compensates; a matrix whose
            entries all have one magnitude then has TOD-R 1 (s = 1 would print ~1/N: 0.00).
        nca_seed: the seed of the NCA's Xavier-normal starts.
        Other arguments: ``SpectrogramSeparator`` (linked from the data).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        net: FrameDAE,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        plateau_factor: float = 0.5,
        plateau_patience: int = 1,
        stop_patience: int = 4,
        nca_iterations: int = 600,
        nca_lr: float = 1e-4,
        nca_segment_seconds: float = 3.1,
        nca_excerpt_seconds: float | None = 30.0,
        nca_max_segments: int | None = None,
        tod_scale: float | None = None,
        nca_seed: int = 0,
        blocks_per_batch: int = 16,
        rate: int = 44100,
        context_frames: int = 1,
        eval_workers: int = 2,
        init_from: str | None = None,
        test_context_frames: int | None = None,
        test_only: bool = False,
        stft: STFTConfig | None = None,
        channels: int = 1,
        targets: str | list[str] = "vocals",
        evaluator: str = "museval",
    ) -> None:
        if not isinstance(net, FrameDAE):
            raise TypeError(f"model.init_args.net: a nets.dae model, got {type(net).__name__}")
        if channels != 1:
            raise ValueError(
                f"DAESeparator is mono (the paper averages channels): channels={channels}"
            )
        if nca_iterations < 0 or nca_segment_seconds <= 0:
            raise ValueError(
                f"nca_iterations={nca_iterations} must be >= 0 and "
                f"nca_segment_seconds={nca_segment_seconds} > 0"
            )
        super().__init__(
            net,
            lr=lr,
            plateau_factor=plateau_factor,
            plateau_patience=plateau_patience,
            blocks_per_batch=blocks_per_batch,
            rate=rate,
            context_frames=context_frames,
            eval_workers=eval_workers,
            init_from=init_from,
            test_context_frames=test_context_frames,
            test_only=test_only,
            stft=stft,
            channels=channels,
            targets=targets,
            evaluator=evaluator,
        )
        if net.bins != self.bins:
            raise ValueError(
                f"model.init_args.net.init_args.bins={net.bins}, but data.stft gives "
                f"{self.bins} bins"
            )
        self.register_buffer("frequency_std", torch.ones(self.bins))
        self._records: list[dict[str, Any]] = []

    # -- normalisation and training ---------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit":
            train = self.trainer.datamodule.splits["train"]
            mixtures = [
                torch.from_numpy(train.track(i).sum(axis=0)) for i in range(len(train.names))
            ]
            self.frequency_std.copy_(input_statistics(mixtures, "linear", self.spectrum)[1])
        # Separator's (an init_from checkpoint, then a resumed run's own, win), not the
        # thesis's normalisation of SpectrogramSeparator.setup
        Separator.setup(self, stage)

    def heads(
        self, magnitude: torch.Tensor, net: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        """The network on the std-normalised (B, F, T) magnitude; its output rescaled by the std
        (a linear magnitude, what the test's reconstruction takes)."""
        std = self.frequency_std[:, None]
        out = (net or self.net)((magnitude / std).unsqueeze(1)).squeeze(1)
        return {"main": out * std}

    def magnitude_from_output(self, output: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """The output is the vocals magnitude (non-negative after the last ReLU)."""
        return output.abs()

    def objective_loss(
        self, output: torch.Tensor, mixture: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 3's MSE on the normalised magnitudes (averaged over the batch's bins)."""
        std = self.frequency_std[:, None]
        return F.mse_loss(output / std, target.abs() / std)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, betas=self.hparams.betas
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=self.hparams.plateau_factor, patience=self.hparams.plateau_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"},
        }

    def configure_callbacks(self) -> list[Callback]:
        return [
            EarlyStopping(
                monitor=self.monitor,
                patience=self.hparams.stop_patience,
                mode="min",
                check_on_train_epoch_end=not self.has_validation,
            )
        ]

    # -- the NCA at test ----------------------------------------------------------------------

    @property
    def scores_path(self) -> Path:
        return self.museval_dir.parent / SCORES

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._records = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        mixture = batch["mixture"]  # (1, T)
        vocals = self.vocals_pair(mixture, batch["targets"])  # (2, 1, T)
        pair = vocals[:, 0].float().cpu().numpy()
        start, length = most_active_window(pair, self.rate, self.hparams.nca_excerpt_seconds)
        std = self.frequency_std[:, None]
        excerpt = slice(start, start + length)
        x_all = (self.spectrum(mixture[0, excerpt], center=True).abs() / std).T  # (frames, N)
        v_all = (self.spectrum(vocals[0, 0, excerpt], center=True).abs() / std).T
        frames = max(1, round(self.hparams.nca_segment_seconds * self.rate / self.stft_config.hop))
        n_segments = len(x_all) // frames
        if self.hparams.nca_max_segments is not None:
            n_segments = min(n_segments, self.hparams.nca_max_segments)
        matrices: dict[str, np.ndarray] = {}
        for segment in range(n_segments):
            part = slice(segment * frames, (segment + 1) * frames)
            couplings = self._segment_records(
                batch["name"], segment, x_all[part], v_all[part], frames * self.stft_config.hop
            )
            if segment == 0:
                matrices = couplings
        if matrices:
            folder = self.museval_dir.parent / "nca"
            folder.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(folder / f"{_safe(batch['name'])}.npz", **matrices)

    def _segment_records(
        self, track: str, segment: int, x: torch.Tensor, v: torch.Tensor, samples: int
    ) -> dict[str, np.ndarray]:
        """The four mappings of one segment (X, V: (T, N) normalised mixture and vocals), their
        records appended; returns the matrices."""
        net, hp = self.net, self.hparams
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().float().clone()  # normal tensors, not inference ones
            v = v.detach().float().clone()
            frozen = _frozen_copy(net)
            with torch.no_grad():
                z, model_estimate = frozen.last_layer_output(x), frozen.estimate(x)
            bins = x.shape[-1]
            couplings = {
                "student": fit_student(x, z, hp.nca_iterations, hp.nca_lr, hp.nca_seed),
                "compositional": fit_compositional(
                    frozen, x, z, hp.nca_iterations, hp.nca_lr, hp.nca_seed
                ),
                "linear": linear_composition(frozen),
                "identity": torch.eye(bins, device=x.device),
            }
        skip = net.skip_filtering
        xn, zn, vn = (_numpy(t) for t in (x, z, v))
        reference = xn * zn if skip else zn  # the model's vocals estimate (A.6)
        base = {"track": track, "segment": segment, "length": samples / self.rate}
        self._records.append(
            {**base, "target": "model", "SNR_true": snr_db(vn, _numpy(model_estimate))}
        )
        for name, matrix in couplings.items():
            c = _numpy(matrix)
            output = xn @ c.T
            if name == "identity":  # A-6: "using the mixture instead of the models' output"
                estimate = xn
            else:
                estimate = xn * output if skip else output
            value = tod_r(c, bins - 1 if hp.tod_scale is None else hp.tod_scale)
            self._records.append(
                {
                    **base,
                    "target": name,
                    "TOD-R": value if math.isfinite(value) else None,
                    "SNR": _finite(snr_db(reference, estimate)),
                    "SNR_true": _finite(snr_db(vn, estimate)),
                }
            )
        return {name: _numpy(m).astype(np.float32) for name, m in couplings.items()}

    def on_test_epoch_end(self) -> None:
        """museval's statistics (the base), then ``scores.json`` with every segment's records
        and ``test/<mapping>/TOD-R``, the mean over segments."""
        super().on_test_epoch_end()
        records = _gathered(self._records)
        if self.trainer.is_global_zero:
            write_records(self.scores_path, records)
        for name in MAPPINGS[:3]:
            values = [r["TOD-R"] for r in records if r["target"] == name and r["TOD-R"] is not None]
            mean = float(np.mean(values)) if values else math.nan
            self.log(f"test/{name}/TOD-R", mean, sync_dist=True)


def _frozen_copy(net: FrameDAE) -> FrameDAE:
    """The network's weights in float32 on their device, frozen (the NCA never changes them)."""
    return copy.deepcopy(net).float().requires_grad_(False)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _finite(value: float) -> float | None:
    """JSON has no infinities: an exact approximation (+inf dB) is recorded as None."""
    return value if math.isfinite(value) else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _gathered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's records (a single process: its own)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(records)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]
