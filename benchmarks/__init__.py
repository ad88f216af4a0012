"""Speed, memory and parity measurements of mlet_jax (the numbers in BENCHMARKS.md); one script per question.

Run each from the repository root as ``python -m benchmarks.<name>`` (its docstring gives the exact command and what
it prints). :mod:`benchmarks.common` holds the timing loop and the machine record they all use, and the outside
paths the peer-bench scripts need (``$MLET_PEER_BENCH``, ``$MLET_PEER_DATA``, ``$MLET_DEEPCTR_PYTHON``, or the
matching options; a missing one is a usage error). The paper's reproductions are in ``experiments/``; benchmarks
may import them, never the reverse.
"""
