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


def mel_filterbank_figure(filterbank: torch.Tensor, rate: int, path: Path) -> Path:
    """Thesis Fig. 5.2: every triangular Mel filter (rows of ``filterbank``, DC bin dropped)
    over the linear frequency axis in Hz; each peaks at (about) 1."""
    n_mels, bins = filterbank.shape
    hertz = torch.arange(1, bins + 1, dtype=torch.float64) * rate / (2 * bins)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(hertz.numpy(), filterbank.T.double().cpu().numpy(), linewidth=0.7)
    ax.set(
        xlabel="frequency (Hz)",
        ylabel="filter weight",
        title=f"{n_mels} triangular Mel filters (Slaney scale, peak 1) at {rate} Hz",
        xlim=(0, rate / 2),
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def oracle_masks_figure(
    estimates: dict[str, torch.Tensor], rate: int, hop: int, path: Path
) -> Path:
    """Thesis Fig. 5.3: log-magnitude spectrograms (F, frames) of oracle estimates side by side
    (e.g. linear STFT mask vs Mel mask) on one colour scale."""
    logs = {
        name: 20 * torch.log10(spec.abs().double().clamp_min(1e-5))
        for name, spec in estimates.items()
    }
    top = max(float(v.max()) for v in logs.values())
    fig, axes = plt.subplots(1, len(logs), figsize=(5.5 * len(logs), 4), squeeze=False)
    for index, (ax, (name, log)) in enumerate(zip(axes[0], logs.items(), strict=True)):
        frames = log.shape[-1]
        image = ax.imshow(
            log.cpu().numpy(),
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=top - 80,
            vmax=top,
            extent=(0, frames * hop / rate, 0, rate / 2),
        )
        ax.set(
            xlabel="time (s)", ylabel="frequency (Hz)", title=f"({chr(ord('a') + index)}) {name}"
        )
    fig.colorbar(image, ax=axes[0].tolist(), label="dB")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
