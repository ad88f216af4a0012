"""Execute every ``notebooks/NN_*.ipynb`` with nbclient (a failing cell fails the test), and check that the stored
notebooks carry no outputs and match their percent-format ``.py`` sources.

The kernel is ``python3`` launched with this interpreter (jupyter_client swaps the spec's ``python`` for
``sys.executable``) and runs in the repository root, so ``import theory`` and ``import mlet_jax`` resolve to this
checkout. The three notebooks take about a minute together on a quiet 2-core CPU.
"""

import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600  # generous: a shared CI box can be several times slower than a quiet one


def test_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_theorem", "02_enhancement_factors", "03_dynamics"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; rebuild with python notebooks/make_notebooks.py"


def test_notebooks_match_sources():
    sys.path.insert(0, str(NOTEBOOK_DIR))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(NOTEBOOK_DIR))
    for src in make_notebooks.sources():
        dst = src.with_suffix(".ipynb")
        assert dst.read_text() == make_notebooks.render(src), (
            f"{dst.name} is stale: run python notebooks/make_notebooks.py")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch):
    # The kernel inherits the environment: keep JAX on the CPU and quiet, whatever the caller's shell says.
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # Multi-threaded OpenBLAS spins when the cores are shared: a 32 x 5000 product took 0.36 s instead of 1 ms.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
