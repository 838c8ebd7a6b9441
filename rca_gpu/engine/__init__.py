"""The engine: everything that runs on arrays, with one home per algorithm.

- ``cards.py``: what a card holds (parameters and rules, limits, grid, implementations, extension, transfer);
  ``reduce/`` and ``cluster/``: one module per algorithm, each with its card and its CPU and GPU adapters;
- ``registry.py``: the registered cards, built-in and plug-ins; ``conformance.py``: the rules every card follows;
- ``dispatch.py``: the one place that picks the GPU or the CPU implementation (and falls back, saying why);
- ``knn.py``: the kNN graph, computed once and reused; ``limits.py``: the GPU libraries' limits;
- ``device.py``: where computation runs, and the ONLY module that moves arrays between libraries or devices;
- ``params.py``: the rule of a parameter; ``sample.py``: seeded samples.
"""
