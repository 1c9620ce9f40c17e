"""The signal setting a model works in (STFT, channels, the targets it estimates), read from a
model, a checkpoint, a resolved config or an export's metadata, and what the inference tools
support.

Export, streaming and latency (``export.py``, ``stream.py``, ``latency.py``, ``make separate
MODEL=``) are built for the thesis's setting only: the default ``STFTConfig`` (2048 / 512,
periodic Hann, DC bin dropped), mono, and one estimated target (vocals, or accompaniment with
vocals = mixture - estimate) in the thesis's ``(B, F, T)`` layout. The streaming loop frames,
windows and overlap-adds with exactly that STFT and writes exactly those two signals, so
anything else would come out silently wrong; ``require_thesis_setting`` refuses it instead,
naming every unsupported part.

Where a setting is read (``Separator``'s ``stft``, ``channels``, ``targets`` and
``SpectrogramSeparator``'s ``multi_target``):
  - a built model: its attributes (``stft_config``, ``channels``, ``multi_target``,
    ``output_targets``), what it computes with; its ``hparams`` for a model without them;
  - a checkpoint, without building the model: the model's hyper-parameters, then, for the STFT
    and the channels only, the DataModule's (``data.stft``, ``data.channels``: what it was
    trained on, for a checkpoint whose model does not record them);
  - a resolved config: ``data.stft``, ``data.channels``, ``model.init_args.multi_target``.
``targets`` alone says what the data's batches hold, not what the model estimates: a thesis
model trained on ``targets: all`` batches still estimates the vocals only and is supported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.conventions import STFTConfig, target_names

#: The pair the inference tools write: the model estimates one of them, the other is the rest.
THESIS_TARGETS: tuple[str, ...] = ("vocals", "accompaniment")
_STFT_FIELDS = tuple(field.name for field in dataclasses.fields(STFTConfig))


@dataclass(frozen=True)
class SignalSetting:
    """What a model's input and output are: its STFT, its audio channels, and ``estimates``:
    the targets its network estimates side by side, empty for the thesis's one estimated
    target (vocals or accompaniment, the other being mixture minus it)."""

    stft: STFTConfig = STFTConfig()
    channels: int = 1
    estimates: tuple[str, ...] = ()


def as_stft(value: Any) -> STFTConfig | None:
    """An ``STFTConfig`` from what a config, a checkpoint or a model holds: the dataclass, a
    mapping of its fields (absent fields are the thesis's), or an object with those fields;
    ``None`` when ``value`` is none of these (e.g. a method named ``stft``)."""
    if value is None or isinstance(value, STFTConfig):
        return value
    if isinstance(value, Mapping):
        return STFTConfig(**{k: v for k, v in value.items() if k in _STFT_FIELDS})
    if hasattr(value, "n_fft") and not callable(value):
        return STFTConfig(**{k: getattr(value, k) for k in _STFT_FIELDS if hasattr(value, k)})
    return None


def as_targets(value: Any) -> tuple[str, ...]:
    """Target names from a ``targets`` value (a ``TARGET_SETS`` name or a list of sources)."""
    if isinstance(value, Sequence):
        return target_names(value if isinstance(value, str) else list(value))
    raise ValueError(f"targets {value!r}: expected a target set name or a list of sources")


def _estimates(multi_target: Any, targets: Any) -> tuple[str, ...]:
    """What a ``SpectrogramSeparator``'s hyper-parameters say its network estimates."""
    return as_targets(targets or "vocals") if multi_target else ()


def hparams_setting(
    hparams: Mapping[str, Any], data_hparams: Mapping[str, Any] | None = None
) -> SignalSetting:
    """The setting recorded in a model's hyper-parameters, with the DataModule's STFT and
    channels where the model's own are absent."""
    data = data_hparams or {}
    stft = as_stft(hparams.get("stft"))
    if stft is None:
        stft = as_stft(data.get("stft")) or STFTConfig()
    channels = hparams.get("channels")
    if channels is None:
        channels = data.get("channels")
    estimates = _estimates(hparams.get("multi_target"), hparams.get("targets"))
    return SignalSetting(stft, int(channels or 1), estimates)


def model_setting(model: Any) -> SignalSetting:
    """The setting of a built model: its attributes where it has them (what it computes
    with), else its ``hparams``."""
    hparams = getattr(model, "hparams", None) or {}
    stft = as_stft(getattr(model, "stft_config", None)) or as_stft(getattr(model, "stft", None))
    if stft is None:
        stft = as_stft(hparams.get("stft")) or STFTConfig()
    channels = getattr(model, "channels", None)
    if not isinstance(channels, int):
        channels = hparams.get("channels")
    multi_target = getattr(model, "multi_target", hparams.get("multi_target"))
    output = getattr(model, "output_targets", None)
    if multi_target:
        estimates = tuple(output) if output else _estimates(True, hparams.get("targets"))
    elif output is not None and tuple(output) != THESIS_TARGETS:
        estimates = tuple(output)  # a model that estimates other targets (e.g. an oracle's)
    else:
        estimates = ()
    return SignalSetting(stft, int(channels or 1), estimates)


def checkpoint_setting(checkpoint: str | Path) -> SignalSetting:
    """The setting recorded in a checkpoint, read without building the model (so a model
    this build cannot even construct is still refused with the right reason)."""
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return hparams_setting(
        state.get("hyper_parameters") or {}, state.get("datamodule_hyper_parameters")
    )


def config_setting(resolved: Mapping[str, Any]) -> SignalSetting:
    """The setting of a resolved experiment config: ``data.stft`` (absent or partial: the
    thesis's defaults), ``data.channels`` (absent: 1), and with ``multi_target`` the data's
    targets (linked into the model by the CLI)."""
    data = resolved.get("data") or {}
    init_args = (resolved.get("model") or {}).get("init_args") or {}
    targets = init_args.get("targets") or data.get("targets")
    return SignalSetting(
        STFTConfig(**(data.get("stft") or {})),
        int(data.get("channels") or 1),
        _estimates(init_args.get("multi_target"), targets),
    )


def unsupported(setting: SignalSetting, stft: bool = True) -> list[str]:
    """What of ``setting`` the inference tools do not support, one phrase each (empty: all
    supported); ``stft=False`` leaves the STFT out (a checkpoint separates with its own)."""
    reasons = []
    thesis, ours = STFTConfig(), setting.stft
    # win_length None and n_fft are the same window: compare the resolved length
    fields = ("n_fft", "hop", "window", "keep_dc")
    same_stft = ours.window_length == thesis.window_length and all(
        getattr(ours, name) == getattr(thesis, name) for name in fields
    )
    if stft and not same_stft:
        dc = "DC bin kept" if ours.keep_dc else "DC bin dropped"
        reasons.append(
            f"STFT n_fft={ours.n_fft}, hop={ours.hop}, win_length={ours.window_length}, "
            f"window={ours.window}, {dc} (supported: the thesis's n_fft={thesis.n_fft}, "
            f"hop={thesis.hop}, periodic {thesis.window}, DC bin dropped)"
        )
    if setting.channels != 1:
        kind = "stereo" if setting.channels == 2 else f"{setting.channels}-channel"
        reasons.append(f"{setting.channels} channels ({kind}; supported: mono)")
    if setting.estimates:
        reasons.append(
            f"targets {', '.join(setting.estimates)} estimated by the network (multi_target; "
            "supported: one estimated target, vocals or accompaniment, the other being "
            "mixture minus it)"
        )
    return reasons


def require_thesis_setting(
    setting: SignalSetting, tool: str, source: str = "", stft: bool = True
) -> None:
    """Raise ``ValueError`` naming everything ``tool`` does not support in ``setting``
    (``stft=False``: any STFT is supported)."""
    reasons = unsupported(setting, stft)
    if reasons:
        where = f"{source}: " if source else ""
        supported = ("the thesis's STFT, " if stft else "") + "mono audio and one target"
        raise ValueError(
            f"{where}{tool} supports only {supported}; unsupported: {'; '.join(reasons)}"
        )
