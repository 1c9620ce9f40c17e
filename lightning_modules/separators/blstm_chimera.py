"""The chimera network for music of Luo et al. (ICASSP 2017), spec chimera-blstm.md: a BLSTM
with a deep clustering (DC) head and a mask-inference (MI) head on Mel features, trained with

    L_CHI = alpha * L_DC / (TF) + (1 - alpha) * L_MI                                 (eq. 4)

where L_DC = ||V V^T - Y Y^T||_F^2 (eq. 1, unweighted, Y the ideal binary Mel labels) and L_MI
is the magnitude spectrum approximation (MSA, eq. 2) or its masked form (mMSA, eq. 3, with
Wiener-like reference masks), both sums over the bins and sources of a segment, averaged over
the batch. alpha = 1 is a pure DC network, alpha = 0 a pure MI network.

At test time either head separates (``test_head``): the MI head's soft masks in their trained
order, or K-means (K = 2) on the DC head's embeddings of the whole signal, whose binary masks
are assigned to the sources by the best permutation per piece ("the sequence of the separation
result is random"). A Mel mask multiplies the mixture's Mel magnitude, the filter bank's
pseudo-inverse maps it back to linear bins ("inverse mel-filterbank transform"), and the
mixture's phase and the iSTFT give the waveform (``reconstruction: pinv``; ``interpolate`` is
the thesis's eq. 5.2 instead). Both sources are estimated: the accompaniment is the second
mask's reconstruction, not mixture - vocals.

Scores: besides museval (the suite's test protocol), the SDR improvement of the paper,
SI-SNR(estimate) - SI-SNR(mixture) per piece and source, in the run's ``scores.json``
(``lightning_modules.evaluation.records``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from datamodules.conventions import STFTConfig
from lightning_modules.dsp.frontend import MelFrontEnd
from lightning_modules.dsp.spectral import wiener_like_mask
from lightning_modules.evaluation.records import (
    SCORES,
    best_permutation,
    sdr_improvement_records,
    write_records,
)
from lightning_modules.separators.clustering import (
    kmeans_masks,
    low_frequency_rule,
    mel_centre_frequencies,
)
from lightning_modules.separators.losses import (
    chimera_loss,
    deep_clustering_loss,
    dominant_source_labels,
    flatten_embeddings,
)
from lightning_modules.separators.separator import VOCALS_PAIR, Separator
from lightning_modules.separators.spectrogram import in_blocks

__all__ = [
    "BLSTMChimeraSeparator",
    "delta",
    "log_mel_features",
    "mmsa_loss",
    "msa_loss",
]

MI_LOSSES = ("msa", "mmsa")
HEADS = ("mi", "dc")
RECONSTRUCTIONS = ("pinv", "interpolate")
#: log(Mel + eps), as the deep clustering work the paper builds on (B.6)
LOG_EPS = 1e-6
#: Singular values of the Mel filter bank below this fraction of the largest count as zero in
#: its pseudo-inverse. librosa's 150-band bank on a 512-point STFT at 16 kHz has numerical rank
#: 129 plus one singular value of 2.2e-4 (1e-4 of the largest): inverted, it amplifies by 4,500
#: and ideal binary masks come back at -8 dB SDRi instead of +15 dB (tests/test_chimera_blstm.py)
PINV_RTOL = 1e-3
#: librosa.feature.delta's default width (9 frames, first order)
DELTA_WIDTH = 9


# --- features ----------------------------------------------------------------------------------


def delta(x: Tensor, width: int = DELTA_WIDTH) -> Tensor:
    """First-order delta over the last axis (frames), as ``librosa.feature.delta(x, width=9,
    order=1)``: the least-squares slope over ``width`` frames (a Savitzky-Golay derivative of
    order 1); the first and last ``width // 2`` frames take the slope of the line fitted to the
    first and last ``width`` frames (librosa's ``mode="interp"``)."""
    if width < 3 or width % 2 == 0:
        raise ValueError(f"delta width must be odd and >= 3, got {width}")
    frames = x.shape[-1]
    if frames < width:
        raise ValueError(f"delta over {frames} frames needs at least width={width} frames")
    half = width // 2
    k = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    slopes = x.unfold(-1, width, 1) @ (k / k.square().sum())  # (..., frames - 2 half)
    left = slopes[..., :1].expand(*slopes.shape[:-1], half)
    right = slopes[..., -1:].expand(*slopes.shape[:-1], half)
    return torch.cat([left, slopes, right], dim=-1)


def log_mel_features(mel: Tensor, deltas: bool = True) -> Tensor:
    """The network's input per frame: log Mel magnitudes (..., F, T), and their first-order
    deltas after them ((..., 2F, T)) with ``deltas`` (Tables 2-3; Table 4 has none)."""
    features = torch.log(mel + LOG_EPS)
    return torch.cat([features, delta(features)], dim=-2) if deltas else features


# --- losses (sums over a segment's bins and sources, mean over the batch) ----------------------


def _check_layout(masks: Tensor, mixture: Tensor, sources: Tensor) -> None:
    if masks.dim() != 4 or masks.shape != sources.shape or mixture.shape != masks[:, 0].shape:
        raise ValueError(
            f"masks {tuple(masks.shape)} and sources {tuple(sources.shape)} must be (B, C, F, "
            f"T), the mixture {tuple(mixture.shape)} (B, F, T)"
        )


def msa_loss(masks: Tensor, mixture: Tensor, sources: Tensor) -> Tensor:
    """Magnitude spectrum approximation (eq. 2): ``sum_c ||R_c - M_c * S||^2`` per segment,
    averaged over the batch. masks M (B, C, F, T), mixture magnitude S (B, F, T), source
    magnitudes R (B, C, F, T)."""
    _check_layout(masks, mixture, sources)
    return (sources - masks * mixture.unsqueeze(1)).square().sum(dim=(1, 2, 3)).mean()


def mmsa_loss(masks: Tensor, mixture: Tensor, sources: Tensor) -> Tensor:
    """Masked magnitude spectrum approximation (eq. 3): ``sum_c ||(O_c - M_c) * S||^2`` per
    segment, averaged over the batch, with the reference masks O = Wiener-like masks of the
    sources, ``R_c^2 / sum_c' R_c'^2`` (the paper's [15])."""
    _check_layout(masks, mixture, sources)
    reference = wiener_like_mask(sources, alpha=2.0)
    return ((reference - masks) * mixture.unsqueeze(1)).square().sum(dim=(1, 2, 3)).mean()


MI_LOSS_FUNCTIONS = {"msa": msa_loss, "mmsa": mmsa_loss}


class BLSTMChimeraSeparator(Separator):
    """The chimera paper's model: Mel (+ delta) features of a mono mixture, a two-headed
    network (``lightning_modules.nets.blstm.BLSTMChimeraNet``), the losses of eq. 1-4, RMSprop,
    and a test of one head.

    Args:
        net: ``BLSTMChimeraNet`` with ``n_mels = mel_bins`` and ``n_inputs = mel_bins`` (x 2
            with ``deltas``), ``n_sources = 2``; without a mask head only for alpha = 1.
        alpha: weight of the deep clustering term (eq. 4): 1 DC only, 0 MI only.
        mi_loss: "msa" (eq. 2) or "mmsa" (eq. 3, Wiener-like reference masks).
        mel_bins: Mel filters of the front end (librosa Slaney, peak 1) on the row's STFT.
        deltas: append first-order deltas of the log-Mel features (Tables 2-3).
        normalize_input: per-dimension mean and variance normalisation of the features with
            statistics of the training mixtures, computed when training starts (kept in the
            checkpoint).
        test_head: which head the test scores, "mi" (masks) or "dc" (K-means). A chimera run
            is trained once and its DC head scored by a test-only second stage.
        reconstruction: "pinv" (the Mel filter bank's pseudo-inverse, ``PINV_RTOL``, applied
            to the masked Mel magnitude, clipped at 0, with the mixture's phase: the paper's
            "inverse mel-filterbank transform") or "interpolate" (the Mel mask interpolated to
            linear bins by the filter bank's transpose times the mixture STFT, thesis eq. 5.2).
        kmeans_restarts, kmeans_seed: K-means++ restarts (lowest inertia kept) and seed.
        lr: RMSprop's learning rate (the paper gives none; 1e-3, spec B-8).
        blocks_per_batch: test-time segments of ``test_context`` frames per forward pass.
        rate, context_frames, eval_workers, init_from, test_context_frames, test_only, stft,
            channels, targets: see ``Separator`` (linked from the data; mono, targets
            "vocals").
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        net: nn.Module,
        alpha: float = 0.1,
        mi_loss: str = "msa",
        mel_bins: int = 150,
        deltas: bool = True,
        normalize_input: bool = True,
        test_head: str = "mi",
        reconstruction: str = "pinv",
        kmeans_restarts: int = 10,
        kmeans_seed: int = 0,
        lr: float = 1e-3,
        blocks_per_batch: int = 16,
        rate: int = 16000,
        context_frames: int = 100,
        eval_workers: int = 2,
        init_from: str | None = None,
        test_context_frames: int | None = None,
        test_only: bool = False,
        stft: STFTConfig | None = None,
        channels: int = 1,
        targets: str | list[str] = "vocals",
        evaluator: str = "museval",
    ) -> None:
        super().__init__(
            rate,
            context_frames,
            eval_workers,
            init_from,
            test_context_frames,
            test_only,
            stft=stft,
            channels=channels,
            targets=targets,
            evaluator=evaluator,
        )
        self.save_hyperparameters_with_net()
        self._check_options(net, alpha, mi_loss, mel_bins, deltas, test_head, reconstruction)
        self.net = net
        self.alpha = float(alpha)
        self.front_end = MelFrontEnd(
            rate, mel_bins, self.stft_config.n_fft, self.stft_config.keep_dc
        )
        bank = self.front_end.filterbank.double()
        inverse = torch.linalg.pinv(bank, rtol=PINV_RTOL).float()
        self.register_buffer("mel_inverse", inverse, persistent=False)  # (bins, Mel)
        if normalize_input:
            self.register_buffer("input_mean", torch.zeros(net.n_inputs))
            self.register_buffer("input_std", torch.ones(net.n_inputs))
        self._records: list[dict[str, Any]] = []

    def _check_options(
        self,
        net: nn.Module,
        alpha: float,
        mi_loss: str,
        mel_bins: int,
        deltas: bool,
        test_head: str,
        reconstruction: str,
    ) -> None:
        """Refuse, naming the option, what this model cannot be."""
        if self.channels != 1 or self.target_names != VOCALS_PAIR:
            raise ValueError(
                "BLSTMChimeraSeparator separates a mono mixture into vocals and accompaniment: "
                f"needs data.channels 1 and data.targets vocals, got {self.channels} and "
                f"{list(self.target_names)}"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"model.init_args.alpha must lie in [0, 1], got {alpha}")
        for option, value, allowed in (
            ("mi_loss", mi_loss, MI_LOSSES),
            ("test_head", test_head, HEADS),
            ("reconstruction", reconstruction, RECONSTRUCTIONS),
        ):
            if value not in allowed:
                raise ValueError(
                    f"model.init_args.{option} must be one of {allowed}, got {value!r}"
                )
        expected = {
            "n_mels": mel_bins,
            "n_inputs": mel_bins * (2 if deltas else 1),
            "n_sources": len(VOCALS_PAIR),
        }
        wrong = {
            k: getattr(net, k, None) for k, v in expected.items() if getattr(net, k, None) != v
        }
        if wrong:
            raise ValueError(
                f"the network has {wrong}; mel_bins={mel_bins}, deltas={deltas} need "
                f"{expected} (model.init_args.net.init_args)"
            )
        has_masks = bool(getattr(net, "has_mask_head", False))
        if alpha < 1.0 and not has_masks:
            raise ValueError(f"alpha={alpha} trains a mask head: the network has none")
        if test_head == "mi" and (alpha == 1.0 or not has_masks):
            raise ValueError("test_head 'mi' needs a mask head trained with alpha < 1")
        if test_head == "dc" and alpha == 0.0:
            raise ValueError("test_head 'dc' needs an embedding head trained with alpha > 0")
        if deltas and min(self.context_frames, self.test_context) < DELTA_WIDTH:
            raise ValueError(
                f"delta features need segments of at least {DELTA_WIDTH} frames: "
                f"context_frames={self.context_frames}, test_context_frames={self.test_context}"
            )

    # -- features and heads ----------------------------------------------------------------

    def mel(self, signal: Tensor, center: bool = False) -> Tensor:
        """Mel magnitudes (..., F, frames) of waveforms (..., T) with the row's STFT."""
        return self.front_end.to_mel(self.spectrum(signal, center=center).abs())

    def features(self, mel: Tensor) -> Tensor:
        """(B, F, T) Mel magnitudes -> (B, n_inputs, T) normalised log-Mel (+ delta) features."""
        x = log_mel_features(mel, self.hparams.deltas)
        if self.hparams.normalize_input:
            x = (x - self.input_mean[:, None]) / self.input_std[:, None]
        return x

    def forward(self, mel: Tensor) -> dict[str, Tensor]:
        """(B, F, T) mixture Mel magnitudes -> the network's heads: "embedding" (B, D, F, T)
        and, with a mask head, "masks" (B, C, F, T)."""
        return self.net(self.features(mel))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.normalize_input:
            mean, std = self.feature_statistics(self.trainer.datamodule.splits["train"])
            self.input_mean.copy_(mean)
            self.input_std.copy_(std)
        super().setup(stage)  # an init_from checkpoint, then a resumed run's own, win

    def feature_statistics(self, split: Any) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation per feature over every frame of the split's tracks'
        mixtures (segments of ``context_frames``, as the network sees them)."""
        total = squares = count = 0
        for index in range(len(split.names)):
            mixture = torch.from_numpy(np.asarray(split.sources_of(index)).sum(axis=0)[0])
            mel = self.mel(mixture.to(self.mel_inverse.device, torch.float32))
            usable = mel.shape[-1] // self.context_frames * self.context_frames
            if usable == 0:
                continue
            segments = mel[:, :usable].unflatten(-1, (-1, self.context_frames)).movedim(-2, 0)
            x = log_mel_features(segments, self.hparams.deltas).double()
            total = total + x.sum(dim=(0, 2))
            squares = squares + x.square().sum(dim=(0, 2))
            count += x.shape[0] * x.shape[2]
        if count == 0:
            raise ValueError(
                f"normalize_input: no training track is {self.context_frames} frames long"
            )
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        return mean.float(), std.clamp_min(1e-8).float()

    # -- training ----------------------------------------------------------------------------

    def loss_terms(self, batch: dict) -> dict[str, Tensor]:
        """``loss`` (eq. 4) and its terms ``dc`` (L_DC / TF) and ``mi`` (L_MSA or L_mMSA) of a
        batch of mixtures (B, 1, T) and targets (B, 2, 1, T)."""
        mixture = self.mel(batch["mixture"][:, 0])  # S: (B, F, T)
        sources = self.mel(self.references(batch["mixture"], batch["targets"])[:, :, 0])
        out = self(mixture)
        zero = mixture.new_zeros(())
        dc = mi = zero
        if self.alpha > 0:
            labels = dominant_source_labels(sources)  # (B, TF, C), bins f-major
            embeddings = flatten_embeddings(out["embedding"])  # (B, TF, D), the same order
            bins = embeddings.shape[1]
            # deep_clustering_loss is ||VV^T - YY^T||^2 / (TF)^2: times TF gives L_DC / TF
            dc = bins * deep_clustering_loss(embeddings, labels)
        if self.alpha < 1:
            mi = MI_LOSS_FUNCTIONS[self.hparams.mi_loss](out["masks"], mixture, sources)
        return {"loss": chimera_loss(dc, mi, self.alpha), "dc": dc, "mi": mi}

    def _checked(self, loss: Tensor, stage: str, batch_idx: int) -> Tensor:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{stage} loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx} "
                f"(global step {self.global_step}); the run stops here and is not marked finished"
            )
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        loss = self._checked(terms["loss"], "training", batch_idx)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log_dict({f"train/{k}": terms[k] for k in ("dc", "mi")}, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.loss_terms(batch)
        self._checked(terms["loss"], "validation", batch_idx)
        self.log("val/loss", terms["loss"], prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": terms[k] for k in ("dc", "mi")}, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=self.hparams.lr)

    # -- separation --------------------------------------------------------------------------

    def full_track_heads(self, mixture: Tensor) -> dict[str, Tensor]:
        """A mono (1, T) or (T,) mixture in consecutive segments of the test context (the
        last zero-padded), each run independently (Section 3.2): its complex STFT
        "spectrum" (bins, frames), Mel magnitude "mel" (F, frames), "embedding" (D, F,
        frames) and, with a mask head, "masks" (C, F, frames)."""
        signal = mixture.reshape(-1, mixture.shape[-1])[0]
        spectrum = self.spectrum(signal, center=True)
        mel = self.front_end.to_mel(spectrum.abs())

        def heads(segments: Tensor) -> Tensor:
            out = self(segments)
            return torch.cat(
                [out["embedding"], out["masks"]] if "masks" in out else [out["embedding"]], 1
            )

        stacked = in_blocks(heads, mel, self.test_context, self.hparams.blocks_per_batch)
        dim = self.net.embedding_dim
        out = {"spectrum": spectrum, "mel": mel, "embedding": stacked[:dim]}
        if stacked.shape[0] > dim:
            out["masks"] = stacked[dim:]
        return out

    def cluster_masks(self, embedding: Tensor) -> Tensor:
        """Binary Mel masks (2, F, frames) from K-means on all bins of a whole signal, in the
        clusters' (arbitrary) order."""
        return kmeans_masks(
            embedding,
            clusters=len(VOCALS_PAIR),
            restarts=self.hparams.kmeans_restarts,
            seed=self.hparams.kmeans_seed,
        )

    def reconstruct(self, mel_masks: Tensor, heads: dict[str, Tensor], length: int) -> Tensor:
        """(C, 1, T) waveforms from Mel masks (C, F, frames) (see ``reconstruction``)."""
        spectrum = heads["spectrum"]
        if self.hparams.reconstruction == "pinv":
            magnitude = (self.mel_inverse @ (mel_masks * heads["mel"])).clamp_min(0)
            estimate = magnitude * torch.exp(1j * spectrum.angle())
        else:
            estimate = self.front_end.to_linear_mask(mel_masks) * spectrum
        return self.waveform(estimate, length).unsqueeze(1)

    def head_estimates(self, mixture: Tensor, head: str) -> tuple[Tensor, Tensor]:
        """(estimates (2, 1, T) in the head's own order, its Mel masks (2, F, frames))."""
        heads = self.full_track_heads(mixture)
        masks = heads["masks"] if head == "mi" else self.cluster_masks(heads["embedding"])
        return self.reconstruct(masks, heads, mixture.shape[-1]), masks

    def separate(self, mixture: Tensor, targets: Tensor | None = None) -> Tensor:
        """(vocals, accompaniment) estimates (2, 1, T) of a (1, T) mixture with ``test_head``.
        The DC head's clusters are assigned by the best permutation against ``targets`` where
        they are given, else by the MIREX low-frequency rule (Section 3.3)."""
        head = self.hparams.test_head
        estimates, masks = self.head_estimates(mixture, head)
        if head == "mi":
            return estimates
        if targets is not None:
            references = self.references(mixture, targets)
            order = best_permutation(_numpy(estimates), _numpy(references))
        else:
            order = low_frequency_rule(masks, mel_centre_frequencies(self.rate, masks.shape[1]))
        return estimates[list(order)]

    def separate_vocals(self, mixture: Tensor, targets: Tensor | None = None) -> Tensor:
        """The vocals estimate of ``separate``, in the mixture's shape ((T,) or (1, T)): what
        ``make separate`` writes (its accompaniment file is mixture - vocals)."""
        return self.separate(mixture.reshape(1, -1), targets)[0].reshape(mixture.shape)

    # -- test --------------------------------------------------------------------------------

    @property
    def scores_path(self) -> Path:
        """``scores.json`` in the run folder (beside ``museval/``)."""
        return self.museval_dir.parent / SCORES

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._records = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """One piece: the head's estimates (DC: in the best permutation per piece), the SDR
        improvement records of both sources, then museval in the background."""
        self.check_test_batch(batch)
        mixture, head = batch["mixture"], self.hparams.test_head
        estimates, _ = self.head_estimates(mixture, head)
        references = _numpy(self.references(mixture, batch["targets"]))
        best = best_permutation(_numpy(estimates), references)
        order = best if head == "dc" else tuple(range(len(VOCALS_PAIR)))
        estimates = estimates[list(order)]
        self._records += sdr_improvement_records(
            batch["name"],
            _numpy(estimates),
            references,
            _numpy(mixture),
            self.output_targets,
            self.rate,
            head=head,
            order=list(order),
            # B-11: whether the MI head's fixed order is the best one (a check on it)
            best_order=list(best),
        )
        self.submit_for_evaluation(batch, estimates)

    def on_test_epoch_end(self) -> None:
        """museval's statistics (the base), then ``scores.json`` with every piece's records
        (gathered from every process) and ``test/<target>/SDRi``, their length-weighted mean."""
        super().on_test_epoch_end()
        records = _gathered(self._records)
        if self.trainer.is_global_zero:
            write_records(self.scores_path, records)
        for target in self.output_targets:
            own = [r for r in records if r["target"] == target]
            weights = sum(r["length"] for r in own)
            value = sum(r["length"] * r["SDRi"] for r in own) / weights if weights else math.nan
            self.log(f"test/{target}/SDRi", float(value), sync_dist=True)


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _gathered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's records (a single process: its own)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(records)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]
