"""Speed, memory and parity measurements of mlet_jax (the numbers in BENCHMARKS.md); one script per question.

Run each from the repository root as ``python -m benchmarks.<name>`` (its docstring gives the exact command and what
it prints). :mod:`benchmarks.common` holds the timing loop and the machine record they all use. The paper's
reproductions are in ``experiments/``; benchmarks may import them, never the reverse.
"""
