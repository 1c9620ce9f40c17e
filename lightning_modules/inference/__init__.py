"""Using trained models: export to one graph (``export``, metadata in ``graph``), exported-graph
runtimes (``runtime``), streaming (``stream``), ``make separate`` (``separate``, audio input in
``audio``), ``make stats`` (``stats``) and the latency benchmark (``latency``).

Deliberately empty, so that ``python -m lightning_modules.inference.<module>`` runs the module
without importing it twice."""
