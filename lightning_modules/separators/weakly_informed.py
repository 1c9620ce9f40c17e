"""Weakly informed singing-voice separation (Schulze-Forster et al., WASPAA 2019; spec
``weakly-informed.md``, issue #14): a vocals magnitude estimated from the mixture magnitude and
side information derived from the true vocals of the same fragment (``side_info.py``).

Per fragment (training chunk, validation chunk or 256-frame test block): mixture and vocals
magnitudes are divided by the mixture's maximum (spec 2.6 item 1), the side information is
computed from the normalised vocals, the network estimates the normalised vocals magnitude
(L1 loss in training), and at test the estimate is multiplied back by that maximum, given the
mixture's phase and inverted; accompaniment = mixture - vocals. Adam with coupled L2 weight
decay (the authors' PyTorch code), no schedule.

``OracleMagnitudeSeparator`` (the table's extra row, "ours, not in the paper") runs the same
test path with the true normalised vocals magnitude as the estimate: the ceiling of every row.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import matplotlib
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.conventions import STFTConfig
from lightning_modules.separators.separator import Separator
from lightning_modules.separators.side_info import (
    SideInfoConfig,
    activity,
    derived_seed,
    frame_sums,
    shifted,
    side_information,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: Figure 3's track, as musdb spells it.
FIGURE_TRACK = "Al James - Schoolboy Facination"
FIGURE_RUN = 16  # Figure 3's block: a run of silence and a run of singing of this many frames
TINY = 1e-12  # an all-silent fragment's maximum: its normalised magnitudes stay 0


def normalised(
    mixture: torch.Tensor, vocals: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Mixture (and vocals) magnitudes (B, F, N) divided by each fragment's mixture maximum;
    returns them and the maxima (B, 1, 1)."""
    peak = mixture.amax(dim=(-2, -1), keepdim=True).clamp_min(TINY)
    return mixture / peak, None if vocals is None else vocals / peak, peak


def longest_run(sequence: torch.Tensor, value: int) -> int:
    """Length of the longest run of ``value`` in a 1-D binary sequence."""
    runs, counts = torch.unique_consecutive(sequence, return_counts=True)
    return int(counts[runs == value].max()) if (runs == value).any() else 0


def attention_figure(
    alpha: torch.Tensor, side: torch.Tensor, vocals: torch.Tensor, title: str, path: Path
) -> Path:
    """Paper Fig. 3: alpha (N, M) as an image (lighter = higher), the side information (M,)
    drawn vertically on its left, the true vocals log-magnitude (F, N) below."""
    fig = plt.figure(figsize=(7, 7))
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 8), height_ratios=(3, 2), wspace=0.05)
    ax_side = fig.add_subplot(grid[0, 0])
    ax_alpha = fig.add_subplot(grid[0, 1])
    ax_vocals = fig.add_subplot(grid[1, 1], sharex=ax_alpha)
    steps = torch.arange(side.shape[0])
    ax_side.plot(side.cpu().numpy(), steps.numpy())
    ax_side.set(ylim=(side.shape[0] - 0.5, -0.5), ylabel="side information step m")
    ax_alpha.imshow(alpha.T.cpu().numpy(), aspect="auto", cmap="gray", interpolation="nearest")
    ax_alpha.set(title=title)
    ax_alpha.tick_params(labelleft=False, labelbottom=False)
    ax_vocals.imshow(
        torch.log(vocals + 1e-6).cpu().numpy(), aspect="auto", origin="lower", cmap="gray"
    )
    ax_vocals.set(xlabel="mixture frame n", ylabel="bin")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


class WeaklyInformedSeparator(Separator):
    """Vocals from the mixture magnitude and side information of the true vocals.

    Args:
        net: ``lightning_modules.nets.weakly_informed.WeaklyInformedNet`` (its ``side_info``
            must be False exactly when ``side_info.kind`` is "none": BL1).
        side_info: ``SideInfoConfig`` (kind, pad_to, pad_value, shorten, threshold,
            test_shift); see ``side_info.py``.
        lr, eps, weight_decay: Adam (coupled L2 weight decay on every parameter).
        seed: seeds the side-information draws: training from (seed, epoch, batch), validation
            from (seed, batch), test from (seed, track), drawn block after block.
        blocks_per_batch: test blocks per forward pass.
        figure_track: the test track whose attention weights ``attention.png`` shows (paper
            Fig. 3); the first test track where it is not in the test set.
        rate, context_frames, eval_workers, init_from, test_context_frames, test_only, stft,
            channels, targets: see ``Separator`` (mono only).
    """

    #: Bump when a change alters this class's results (sweeps/identity.py).
    results_version: ClassVar[int] = 1

    def __init__(
        self,
        net: nn.Module | None = None,
        side_info: SideInfoConfig | None = None,
        lr: float = 1e-4,
        eps: float = 1e-8,
        weight_decay: float = 1e-3,
        seed: int = 0,
        blocks_per_batch: int = 16,
        figure_track: str = FIGURE_TRACK,
        rate: int = 16000,
        context_frames: int = 256,
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
        if self.channels != 1:
            raise ValueError("the weakly informed model is mono: data.channels must be 1")
        self.side_config = side_info or SideInfoConfig()
        self.net = net
        if net is None and type(self).trainable:
            raise ValueError("model.init_args.net is missing: the model to train")
        informed = self.side_config.kind != "none"
        if net is not None and bool(getattr(net, "side_info", informed)) != informed:
            raise ValueError(
                f"model.init_args.side_info.kind {self.side_config.kind!r} and the network's "
                f"side_info={net.side_info} disagree (BL1: kind 'none' with side_info false)"
            )
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.seed, self.blocks_per_batch, self.figure_track = seed, blocks_per_batch, figure_track
        self._track: str | None = None
        self._figure_done = False

    # -- one batch of fragments -------------------------------------------------------------

    def fragment_magnitudes(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture and vocals magnitudes (B, F, N) of a training/validation batch."""
        mixture = batch["mixture"][:, 0]
        vocals = self.vocals_pair(batch["mixture"], batch["targets"])[:, 0, 0]
        return self.spectrum(mixture).abs(), self.spectrum(vocals).abs()

    def estimate(
        self, mixture: torch.Tensor, vocals: torch.Tensor, side: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised vocals magnitude and attention weights (or None) from normalised
        magnitudes (B, F, N) and the side information."""
        assert self.net is not None
        return self.net(mixture, side)

    def side(
        self, vocals: torch.Tensor, seed_parts: tuple, shared_left: bool
    ) -> torch.Tensor | None:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, *seed_parts))
        return side_information(vocals, self.side_config, generator, shared_left)

    def fragment_loss(self, batch: dict, seed_parts: tuple, shared_left: bool) -> torch.Tensor:
        mixture, vocals = self.fragment_magnitudes(batch)
        mixture, vocals, _ = normalised(mixture, vocals)
        side = self.side(vocals, seed_parts, shared_left)
        estimate, _ = self.estimate(mixture, vocals, side)
        return F.l1_loss(estimate, vocals)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.fragment_loss(batch, ("train", self.current_epoch, batch_idx), True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.fragment_loss(batch, ("valid", batch_idx), False)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    # -- full tracks --------------------------------------------------------------------------

    def separate_vocals(
        self, mixture: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vocals (C=1, T) of a full track (C=1, T) in blocks of the test context, each with
        its own normalisation and its own side information from the same block of the true
        vocals (``targets``, used only through ``side_info.py``)."""
        if targets is None:
            raise ValueError("the weakly informed model needs the true vocals (side information)")
        vocals = self.vocals_pair(mixture, targets)[0, 0]
        return self.separate_with_details(mixture[0], vocals)["waveform"][None]

    @torch.no_grad()
    def separate_with_details(self, mixture: torch.Tensor, vocals: torch.Tensor) -> dict:
        """Mono (T,) mixture and true vocals -> {"waveform" (T,), "blocks": per block (mixture,
        vocals normalised magnitudes, side information, alpha)}."""
        spectrum = self.spectrum(mixture, center=True)  # (F, frames)
        true = self.spectrum(vocals, center=True).abs()
        frames, context = spectrum.shape[-1], self.test_context
        n_blocks = -(-frames // context)

        def blocks(x: torch.Tensor) -> torch.Tensor:  # (F, frames) -> (n_blocks, F, context)
            x = F.pad(x, (0, n_blocks * context - frames))
            return x.unflatten(-1, (n_blocks, context)).movedim(-2, 0)

        mix_n, voc_n, peak = normalised(blocks(spectrum.abs()), blocks(true))
        generator_parts = ("test", self._track or "")
        side = self.side(voc_n, generator_parts, shared_left=False)
        side = shifted(side, self.side_config)
        outputs, alphas = [], []
        step = self.blocks_per_batch
        for start in range(0, n_blocks, step):
            part = slice(start, start + step)
            out, alpha = self.estimate(
                mix_n[part], voc_n[part], None if side is None else side[part]
            )
            outputs.append(out)
            alphas.append(alpha)
        estimate = torch.cat(outputs) * peak  # back to the mixture's scale
        magnitude = estimate.movedim(0, -2).flatten(-2)[..., :frames]
        waveform = self.waveform(magnitude * torch.exp(1j * spectrum.angle()), mixture.shape[-1])
        alpha = None if alphas[0] is None else torch.cat(alphas)
        return {
            "waveform": waveform,
            "mixture": mix_n,
            "vocals": voc_n,
            "side": side,
            "alpha": alpha,
        }

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._track = str(batch["name"])
        super().test_step(batch, batch_idx)
        wanted = self._track == self.figure_track or batch_idx == 0
        if wanted and not self._figure_done and self.trainer.is_global_zero:
            self.plot_attention(batch)

    def plot_attention(self, batch: dict) -> Path | None:
        """``attention.png`` in the run folder (paper Fig. 3) for rows with attention: the
        first block with a run of silence and a run of singing of ``FIGURE_RUN`` frames each
        (the first block where there is none)."""
        if self.side_config.kind == "none":
            return None
        vocals = self.vocals_pair(batch["mixture"], batch["targets"])[0, 0]
        details = self.separate_with_details(batch["mixture"][0], vocals)
        chosen = 0
        for index, block in enumerate(details["vocals"]):
            active = activity(frame_sums(block), self.side_config.threshold)
            if min(longest_run(active, 0), longest_run(active, 1)) >= FIGURE_RUN:
                chosen = index
                break
        self._figure_done = self._track == self.figure_track
        return attention_figure(
            details["alpha"][chosen],
            details["side"][chosen, 0],
            details["vocals"][chosen],
            f"attention weights, '{self._track}', block {chosen}",
            Path(self.trainer.default_root_dir) / "attention.png",
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(),
            lr=self.lr,
            betas=(0.9, 0.999),
            eps=self.eps,
            weight_decay=self.weight_decay,
        )


class OracleMagnitudeSeparator(WeaklyInformedSeparator):
    """The true vocals magnitude with the mixture's phase through the same test path (the
    ideal amplitude mask at this STFT): no network, no training."""

    results_version: ClassVar[int] = 1
    trainable = False

    def __init__(
        self,
        rate: int = 16000,
        context_frames: int = 256,
        eval_workers: int = 2,
        test_context_frames: int | None = None,
        stft: STFTConfig | None = None,
        channels: int = 1,
        targets: str | list[str] = "vocals",
        evaluator: str = "museval",
    ) -> None:
        super().__init__(
            net=None,
            side_info=SideInfoConfig(kind="none"),
            rate=rate,
            context_frames=context_frames,
            eval_workers=eval_workers,
            test_context_frames=test_context_frames,
            stft=stft,
            channels=channels,
            targets=targets,
            evaluator=evaluator,
        )

    def estimate(
        self, mixture: torch.Tensor, vocals: torch.Tensor, side: torch.Tensor | None
    ) -> tuple[torch.Tensor, None]:
        return vocals, None

    def configure_optimizers(self) -> None:
        return None
