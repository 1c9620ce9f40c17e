"""Chimera deep clustering (thesis 4.6, Tables 4.12/4.13; Luo et al.'s chimera network).

An embedding head (K = 20, unit-normalised per time-frequency bin) is trained with the
magnitude-weighted deep clustering loss on ideal binary labels (which source dominates each
bin), next to the main head's objective: L = alpha * L_wDC + (1 - alpha) * L_main (eq. 4.12).
The attractor variant replaces L_wDC by the main objective computed on attractor masks
(eq. 4.10/4.11); its attractors are the plain means of the embeddings of the bins each source
dominates, as eq. 4.10 writes them (``attractor_weighting="magnitude"`` weights the means by the
mixture magnitude |X|, the weights of L_wDC, which eq. 4.10 does not). The embedding head is
dropped at inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.evaluation.figures import embedding_pca_figure
from lightning_modules.separators.losses import (
    attractor_masks,
    attractors,
    chimera_loss,
    deep_clustering_loss,
    dominant_source_labels,
    flatten_embeddings,
    magnitude_weights,
)
from lightning_modules.separators.spectrogram import SpectrogramSeparator, thesis_layout_only

CLUSTERINGS = ("deep_clustering", "attractor")
ATTRACTOR_WEIGHTINGS = ("none", "magnitude")


class ChimeraSeparator(SpectrogramSeparator):
    """Args:
    alpha: weight of the clustering loss (eq. 4.12).
    clustering: "deep_clustering" (eq. 4.9) or "attractor" (SA on attractor masks, 4.10/4.11).
    attractor_weighting: the attractors' means over the bins a source dominates, "none"
        (eq. 4.10 as printed) or "magnitude" (weighted by the mixture magnitude |X|); only
        used with ``clustering="attractor"``.
    Other arguments as ``SpectrogramSeparator``; ``net`` must have an embedding head.
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        net: nn.Module,
        alpha: float = 0.2,
        clustering: str = "deep_clustering",
        attractor_weighting: str = "none",
        **kwargs,
    ) -> None:
        thesis_layout_only("ChimeraSeparator", kwargs)
        super().__init__(net, **kwargs)
        if clustering not in CLUSTERINGS:
            raise ValueError(f"clustering must be one of {CLUSTERINGS}, got {clustering!r}")
        if attractor_weighting not in ATTRACTOR_WEIGHTINGS:
            raise ValueError(
                f"attractor_weighting must be one of {ATTRACTOR_WEIGHTINGS}, "
                f"got {attractor_weighting!r}"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if attractor_weighting != "none" and clustering != "attractor":
            # it would change nothing but the run's identity (a duplicate run)
            raise ValueError("attractor_weighting applies to clustering: attractor only")
        if clustering == "attractor" and self.front_end is not None:
            raise ValueError("the attractor loss is built for linear bins; use deep_clustering")
        self.alpha = alpha
        self.clustering = clustering
        self.attractor_weighting = attractor_weighting

    def clustering_inputs(
        self, mixture: torch.Tensor, target: torch.Tensor, embedding: torch.Tensor
    ):
        """Flattened embeddings, ideal binary labels (target vs the rest) and the mixture's
        magnitude weights, all in one time-frequency order; on Mel bins with a Mel front end
        (the Mel affinities of thesis 5.2.2)."""
        sources = self.analysis(torch.stack([target.abs(), (mixture - target).abs()], dim=1))
        return (
            flatten_embeddings(embedding),
            dominant_source_labels(sources),
            magnitude_weights(self.analysis(mixture.abs())),
        )

    def clustering_loss(
        self, mixture: torch.Tensor, target: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """The clustering term of eq. 4.12 from complex (B, F, T) mixture/target STFTs and the
        (B, K, F, T) embeddings: L_wDC (eq. 4.9), or the MSE of the attractor-masked mixture
        magnitude against the target's (eq. 4.10/4.11)."""
        embeddings, labels, weights = self.clustering_inputs(mixture, target, embedding)
        if self.clustering == "deep_clustering":
            return deep_clustering_loss(embeddings, labels, weights)
        centroid_weights = weights if self.attractor_weighting == "magnitude" else None
        masks = attractor_masks(embeddings, attractors(embeddings, labels, centroid_weights))
        target_mask = masks[..., 0].reshape(target.shape)
        return F.mse_loss(target_mask * mixture.abs(), target.abs())

    def training_loss(self, batch: dict) -> torch.Tensor:
        mixture, target = self.spectrum(self._mix(batch)), self.spectrum(self._target(batch))
        heads = self.heads(mixture.abs())
        main = self.objective_loss(heads["main"], mixture, target)
        clustering = self.clustering_loss(mixture, target, heads["embedding"])
        return chimera_loss(clustering, main, self.alpha)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        long_enough = batch["mixture"].shape[-1] // self.stft_config.hop + 1 >= self.test_context
        if batch_idx == 0 and self.trainer.is_global_zero and long_enough:
            # thesis Fig. 4.10 from the first test track
            self.plot_embeddings(batch, Path(self.trainer.default_root_dir) / "embeddings_pca.png")

    @torch.no_grad()
    def plot_embeddings(self, batch: dict, path: Path) -> Path:
        """First three principal components of the embeddings of the loudest block of a
        track, coloured by the source that dominates each bin."""
        one = {"mixture": batch["mixture"][None], "targets": batch["targets"][None]}
        mixture = self.spectrum(self._mix(one)[0], center=True)
        target = self.spectrum(self._target(one)[0], center=True)
        frames = self.test_context
        energy = mixture.abs().square().sum(0).unfold(0, frames, frames).sum(-1)
        start = int(energy.argmax()) * frames
        block = slice(start, start + frames)
        mixture, target = mixture[None, :, block], target[None, :, block]
        embedding = self.heads(mixture.abs())["embedding"]
        embeddings, labels, weights = self.clustering_inputs(mixture, target, embedding)
        return embedding_pca_figure(embeddings[0], labels[0, :, 0] > 0, weights[0], path)
