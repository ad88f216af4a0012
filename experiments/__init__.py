"""Scripts that reproduce the MLET paper's figures and tables; one module per experiment (see each docstring).

``python -m experiments.reproduce --quick --out DIR`` runs them all on the synthetic default.
"""
