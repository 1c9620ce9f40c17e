"""Start-up of a museval worker process of ``bss.ParallelEvaluator``.

Imports nothing at module level on purpose: a spawned worker unpickles :func:`start_worker`
(importing this module and the two light package ``__init__``s above it) before it has
imported numpy, so the OpenBLAS thread cap set here is in place when numpy loads with the
first track. The workers never import torch or Lightning: only ``bss`` and what it needs.
"""

from __future__ import annotations

import os


def start_worker(blas_threads: int | None) -> None:
    """Cap OpenBLAS (numpy/scipy) at ``blas_threads`` threads in this process (None: leave the
    library default): n_workers processes x all-core BLAS pools oversubscribe the CPU (10x
    slower museval measured on a loaded 2-core box). torch's pools are not touched."""
    if blas_threads is None:
        return
    os.environ["OPENBLAS_NUM_THREADS"] = str(blas_threads)  # read when numpy loads OpenBLAS
    try:  # and for a numpy already loaded (e.g. by a parent script re-run as __mp_main__)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    ThreadpoolController().select(internal_api="openblas").limit(limits=blas_threads)
