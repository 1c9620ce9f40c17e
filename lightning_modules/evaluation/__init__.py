"""Evaluation: museval BSS Eval v4, PES/EPS, statistics and the parallel evaluator (``bss``);
figures written beside results (``figures``); the worker processes' start-up (``worker``).

Deliberately empty: the museval workers import ``bss`` through this package, and must not load
torch or Lightning."""
