"""Figures a model writes about itself during test (files only, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def embedding_pca_figure(
    embeddings: torch.Tensor,
    is_target: torch.Tensor,
    weights: torch.Tensor,
    path: Path,
    points: int = 3000,
) -> Path:
    """Thesis Fig. 4.10: embeddings (TF, K) on their first 3 principal components, vocals bins
    red, accompaniment blue; the ``points`` heaviest bins (magnitude weights) are shown, so
    near-silent bins with arbitrary labels do not clutter the picture."""
    keep = weights.argsort(descending=True)[:points]
    x = embeddings[keep].double()
    x = x - x.mean(dim=0)
    _, _, components = torch.linalg.svd(x, full_matrices=False)
    projected = (x @ components[:3].T).cpu().numpy()
    target = is_target[keep].cpu().numpy()
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    for selected, color, label in (
        (~target, "tab:blue", "accompaniment"),
        (target, "tab:red", "vocals"),
    ):
        ax.scatter(*projected[selected].T, s=3, c=color, label=label, alpha=0.6)
    ax.set(
        xlabel="PC 1", ylabel="PC 2", zlabel="PC 3", title="embeddings of the loudest test block"
    )
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
