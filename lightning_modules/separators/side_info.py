"""Side information of the weakly informed separation rows (paper 4.3, spec 2.3), computed from
the true vocals of a fragment, never from anything else (there are no instrument labels).

All from the vocals magnitude |V| (B, F, N) normalised by the mixture's maximum (spec 2.6
item 1):

* ``ones`` (BL2): a sequence of ones, one per frame;
* ``magnitude`` (M1): Y_n = sum_f |V_{f,n}|;
* ``activity`` (A): a_n = 1 where Y_n >= ``threshold`` (0.1), else 0;
* ``pad_to`` (M2, A1-A3): the sequence padded with ``pad_value`` (100) to ``pad_to`` (300) steps,
  the padding split at a random point (left ~ U{0..pad_to - length});
* ``shorten`` (A2: [0], A3: [0, 1]): in every run of these values of length L >= 2, w of its
  elements are deleted, w ~ U{1..floor(L/2)}, drawn per run and example; runs of length 1 stay;
* ``test_shift`` (A3.2): the padded test sequence rolled by that many steps (``torch.roll``).

Draws come from a ``torch.Generator`` the caller seeds (``derived_seed``), so training redraws
the same side information when a run resumes and validation/test draw the same every epoch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

KINDS = ("none", "ones", "magnitude", "activity")


@dataclass
class SideInfoConfig:
    """Which side information a row gets (``model.init_args.side_info``); see the module."""

    kind: str = "magnitude"
    pad_to: int | None = None
    pad_value: float = 100.0
    shorten: list[int] = field(default_factory=list)
    threshold: float = 0.1
    test_shift: int = 0

    def __post_init__(self) -> None:
        where = "model.init_args.side_info"
        if self.kind not in KINDS:
            raise ValueError(f"{where}.kind must be one of {KINDS}, got {self.kind!r}")
        if any(value not in (0, 1) for value in self.shorten):
            raise ValueError(f"{where}.shorten lists run values 0 and/or 1, got {self.shorten}")
        if self.shorten and (self.kind != "activity" or self.pad_to is None):
            raise ValueError(
                f"{where}.shorten shortens runs of binary activity and gives sequences of "
                "different lengths: it needs kind 'activity' and pad_to"
            )
        if self.kind in ("none", "ones") and (self.pad_to or self.test_shift):
            raise ValueError(f"{where}: kind {self.kind!r} takes no pad_to nor test_shift")


def derived_seed(*parts: object) -> int:
    """A seed from (seed, stage, epoch, batch, track, block ...), the same in every process."""
    return zlib.crc32(repr(parts).encode())


def frame_sums(vocals: torch.Tensor) -> torch.Tensor:
    """M1: Y_n = sum over the bins of the normalised vocals magnitude (..., F, N) -> (..., N)."""
    return vocals.sum(dim=-2)


def activity(sums: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Binary vocal activity: 0 where the frame sum is below ``threshold``, else 1."""
    return (sums >= threshold).to(sums.dtype)


def shorten_runs(
    sequence: torch.Tensor, values: list[int], generator: torch.Generator
) -> torch.Tensor:
    """Delete w ~ U{1..floor(L/2)} elements of every run (of length L >= 2) of ``values`` in a
    1-D binary ``sequence``; one draw per run, in order; other runs and the order are kept."""
    runs, counts = torch.unique_consecutive(sequence.cpu(), return_counts=True)
    lengths = []
    for value, length in zip(runs.tolist(), counts.tolist(), strict=True):
        if int(value) in values and length >= 2:
            length -= int(torch.randint(1, length // 2 + 1, (1,), generator=generator))
        lengths.append(length)
    out = torch.repeat_interleave(runs, torch.tensor(lengths))
    return out.to(sequence.device)


def pad_split(sequence: torch.Tensor, pad_to: int, value: float, left: int) -> torch.Tensor:
    """``sequence`` (N,) with ``left`` steps of ``value`` before it and the rest up to
    ``pad_to`` after it."""
    right = pad_to - sequence.shape[-1] - left
    if right < 0 or left < 0:
        raise ValueError(
            f"side information of {sequence.shape[-1]} steps does not fit model.init_args."
            f"side_info.pad_to {pad_to} with {left} steps of left padding"
        )
    return torch.nn.functional.pad(sequence, (left, right), value=value)


def side_information(
    vocals: torch.Tensor,
    config: SideInfoConfig,
    generator: torch.Generator,
    shared_left: bool,
) -> torch.Tensor | None:
    """(B, 1, M) side information from the normalised vocals magnitude (B, F, N), or None for
    ``kind: none`` (BL1). ``shared_left``: one left padding for the whole batch (training, "for
    each batch"), else one per example (validation and test blocks). ``test_shift`` is not
    applied here (``shifted``)."""
    if config.kind == "none":
        return None
    if config.kind == "ones":
        return torch.ones(vocals.shape[0], 1, vocals.shape[-1], dtype=vocals.dtype).to(vocals)
    sums = frame_sums(vocals)
    sequences = list(activity(sums, config.threshold) if config.kind == "activity" else sums)
    if config.shorten:
        sequences = [shorten_runs(s, config.shorten, generator) for s in sequences]
    if config.pad_to is not None:
        room = [config.pad_to - s.shape[-1] for s in sequences]
        if min(room) < 0:
            raise ValueError(
                f"side information of {max(s.shape[-1] for s in sequences)} steps is longer "
                f"than model.init_args.side_info.pad_to {config.pad_to}"
            )
        if shared_left:
            shared = int(torch.randint(0, min(room) + 1, (1,), generator=generator))
            lefts = [shared] * len(sequences)
        else:
            lefts = [int(torch.randint(0, r + 1, (1,), generator=generator)) for r in room]
        sequences = [
            pad_split(s, config.pad_to, config.pad_value, left)
            for s, left in zip(sequences, lefts, strict=True)
        ]
    return torch.stack(sequences).unsqueeze(1)


def shifted(side: torch.Tensor | None, config: SideInfoConfig) -> torch.Tensor | None:
    """A3.2's test side information: rolled by ``test_shift`` steps along time."""
    if side is None or not config.test_shift:
        return side
    return torch.roll(side, config.test_shift, dims=-1)
