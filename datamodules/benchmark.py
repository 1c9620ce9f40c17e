"""Training-batch throughput: the DataModule's sampler beside a per-item file-reading loader.

The thesis's training was bound by data loading ("slow disk read data fetching"). This
benchmark measures, in one run on the same data, examples per second of
  - the suite's path: one vectorised gather per batch from the decoded in-memory split;
  - the usual per-item ``Dataset.__getitem__`` that opens each stem file at a random offset,
    reads the chunk, downmixes and resamples it (what a loader without a decoded cache does),
    through a DataLoader with 0 and 2 worker processes.
It writes ``<out>/data_loading.json`` and ``<out>/data_loading.md`` (the ratios, the commit,
date, machine and the load before and after) and prints the ratios.
``python -m datamodules.benchmark --out results/bench``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.cache import RESAMPLER
from datamodules.conventions import SOURCES, chunk_samples
from datamodules.files import write_atomic
from datamodules.musdb_datamodule import MUSDBDataModule
from datamodules.provenance import load_average, markdown_line, provenance

#: DataLoader worker processes of the per-item baseline.
WORKERS = (0, 2)


class PerItemStemDataset(Dataset):
    """The baseline: every example opens one file per source (MUSDB wav layout)."""

    def __init__(self, track_dirs: list[Path], frames: int, rate: int, length: int, seed: int = 0):
        self.track_dirs = track_dirs
        self.rate = rate
        self.chunk = chunk_samples(frames)
        self.length = length
        self.seed = seed
        self.native_rate = sf.info(track_dirs[0] / "vocals.wav").samplerate
        self.native_chunk = int(np.ceil(self.chunk * self.native_rate / rate)) + 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        sources = []
        for source in SOURCES:
            path = self.track_dirs[rng.integers(len(self.track_dirs))] / f"{source}.wav"
            frames = sf.info(path).frames
            start = int(rng.integers(0, frames - self.native_chunk))
            audio, _ = sf.read(path, start=start, frames=self.native_chunk, dtype="float32")
            mono = librosa.resample(
                audio.mean(axis=1),
                orig_sr=self.native_rate,
                target_sr=self.rate,
                res_type=RESAMPLER,
            )[: self.chunk]
            sources.append(mono * rng.uniform(0.25, 1.25))
        stacked = torch.from_numpy(np.stack(sources).astype(np.float32))
        return {"mixture": stacked.sum(dim=0), "targets": stacked}


def _throughput(batches, n_batches: int, batch_size: int) -> float:
    """Examples per second over ``n_batches`` (epochs are chained: a small synthetic epoch
    holds only a few batches)."""

    def forever():
        while True:
            yield from batches

    iterator = forever()
    next(iterator)  # warm-up: worker start, first allocation
    start = time.perf_counter()
    for _ in range(n_batches):
        batch = next(iterator)
        assert batch["mixture"].shape[0] == batch_size
    return n_batches * batch_size / (time.perf_counter() - start)


def run(
    out_dir: Path,
    batch_size: int = 32,
    cache_dir: str | None = None,
    root: str | None = None,
    batches: int = 50,
    baseline_batches: int = 3,
) -> dict:
    """Time both loaders at 8 and 64 frames; write ``data_loading.json`` and ``.md``.

    ``root``: a MUSDB18 wav tree (default: ``$MUSDB_ROOT``, else the synthetic set);
    ``batches`` / ``baseline_batches``: batches timed per configuration of the DataModule and
    of the per-item loader (it is one to two orders of magnitude slower).
    """
    results = provenance()  # the load before the data is decoded
    options = {"root": root, "batch_size": batch_size, "cache_dir": cache_dir}
    data = MUSDBDataModule(context_frames=64, **options)
    data_root, is_wav = data._root()
    if not is_wav:
        raise ValueError(f"{data_root}: the per-item baseline reads the wav layout only")
    track_dirs = sorted(p for p in (data_root / "train").iterdir() if p.is_dir())
    results |= {
        "data": data.data_source,
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "batch_size": batch_size,
        "batches": {"datamodule": batches, "per_item": baseline_batches},
        "rows": [],
    }
    for frames in (8, 64):
        data = MUSDBDataModule(context_frames=frames, **options)
        data.prepare_data()
        data.setup("fit")
        ours = _throughput(data.train_dataloader(), batches, batch_size)
        row = {"frames": frames, "datamodule_examples_per_s": ours}
        for workers in WORKERS:
            dataset = PerItemStemDataset(track_dirs, frames, data.hparams.rate, 10_000)
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
            baseline = _throughput(loader, baseline_batches, batch_size)
            row[f"per_item_{workers}_workers_examples_per_s"] = baseline
            row[f"ratio_vs_per_item_{workers}_workers"] = ours / baseline
        results["rows"].append(row)
        print(
            f"{frames:>2} frames: DataModule {ours:,.0f} examples/s; per-item loader "
            f"{row['per_item_0_workers_examples_per_s']:,.0f} (0 workers), "
            f"{row['per_item_2_workers_examples_per_s']:,.0f} (2 workers); ratios "
            f"x{row['ratio_vs_per_item_0_workers']:,.0f} / "
            f"x{row['ratio_vs_per_item_2_workers']:,.0f}"
        )
    results["load_after"] = load_average()
    write_atomic(out_dir / "data_loading.json", json.dumps(results, indent=1))
    write_atomic(out_dir / "data_loading.md", markdown(results))
    print(f"wrote {out_dir / 'data_loading.json'} and {out_dir / 'data_loading.md'}")
    return results


def markdown(results: dict) -> str:
    """The ratios and where they were measured, for ``results/bench/data_loading.md``."""
    lines = [
        "# Data-loading throughput",
        "",
        f"Training examples per second, batches of {results['batch_size']}: the DataModule's "
        "vectorised gather from the decoded split beside a per-item `Dataset.__getitem__` that "
        "opens, reads, downmixes and resamples every chunk from the wav files (DataLoader with "
        f"{' and '.join(str(w) for w in WORKERS)} worker processes), in one run on the same "
        f"data: {results['data']}. Measured on {markdown_line(results)} the run, on "
        f"{results['device']}.",
        "",
        "| frames | DataModule | per-item, 0 workers | ratio | per-item, 2 workers | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        cells = [str(row["frames"]), f"{row['datamodule_examples_per_s']:,.0f}"]
        for workers in WORKERS:
            cells.append(f"{row[f'per_item_{workers}_workers_examples_per_s']:,.0f}")
            cells.append(f"{row[f'ratio_vs_per_item_{workers}_workers']:,.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--root", help="a MUSDB18 wav tree (default: $MUSDB_ROOT or synthetic)")
    parser.add_argument("--batches", type=int, default=50, help="timed DataModule batches")
    parser.add_argument("--baseline-batches", type=int, default=3, help="timed per-item batches")
    args = parser.parse_args()
    run(
        args.out,
        args.batch_size,
        root=args.root,
        batches=args.batches,
        baseline_batches=args.baseline_batches,
    )


if __name__ == "__main__":
    main()
