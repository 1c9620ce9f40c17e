"""Thesis Fig. 4.8: PCA of the MBC assignment kernels (files only, no display).

The multi-band-channel network (``nets.multiband.BandChannelDenseNet``) re-assembles its bands
with a 3x3 conv ``assign`` whose output kernels ``g * kernels_per_band ...`` become band ``g``.
The thesis (4.4.3) runs a PCA "over the l2 norms of all 3 x 3 weight matrices connected to
particular input channels for each output kernel of the layer": one point per output kernel,
its features the norms of its 3x3 slices, one per input map. Kernels that learned to read only
the maps of their band would form one cluster per band; the thesis found none (spec B3: two
principal components, points coloured by the band their kernel is assigned to).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BAND_NAMES = ("0-8 kHz", "8-16 kHz")


def kernel_norm_pca(
    weight: torch.Tensor, n_bands: int = 2, components: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points, band)``: the ``(out, components)`` projection of the ``(out, in)`` matrix of
    l2 norms of ``weight``'s ``kh x kw`` slices (centred over the output kernels) on its first
    principal components, and each output kernel's band (``out / n_bands`` consecutive
    kernels per band, lowest band first)."""
    if weight.dim() != 4:
        raise ValueError(
            f"expected a conv weight (out, in, kh, kw), got shape {tuple(weight.shape)}"
        )
    out_kernels = weight.shape[0]
    if out_kernels % n_bands:
        raise ValueError(f"{out_kernels} output kernels do not split into {n_bands} bands")
    norms = weight.detach().double().flatten(2).norm(dim=-1)
    centred = norms - norms.mean(dim=0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    points = centred @ directions[:components].T
    band = torch.arange(out_kernels) // (out_kernels // n_bands)
    return points, band


def kernel_pca_figure(
    weight: torch.Tensor, path: Path, band_names: Sequence[str] = BAND_NAMES
) -> tuple[Path, torch.Tensor]:
    """Fig. 4.8 of ``weight`` (the MBC ``assign.weight``) written to ``path``; returns the
    path and the projected points (for checks)."""
    points, band = kernel_norm_pca(weight, len(band_names))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for g, name in enumerate(band_names):
        selected = (band == g).numpy()
        ax.scatter(*points.numpy()[selected].T, s=25, label=f"kernels assigned to {name}")
    ax.set(
        xlabel="PC 1",
        ylabel="PC 2",
        title="MBC assignment kernels: PCA of the l2 norms per input map",
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, points


def assignment_weight(checkpoint: str | Path) -> torch.Tensor:
    """The MBC ``assign.weight`` stored in a trained checkpoint (Lightning's ``state_dict``)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    keys = [k for k in state if k.endswith("net.assign.weight")]
    if len(keys) != 1:
        raise ValueError(f"{checkpoint}: expected one MBC assignment conv, found {keys}")
    return state[keys[0]]
