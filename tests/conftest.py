import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
# The suite compiles hundreds of small programs, and LLVM's optimization of their CPU code is most of each compile:
# without it (HLO passes still run, so the tests that read compiled HLO see the same programs) the suite takes about
# half the time on the 2-core box (test_chunked_step.py: 51 s against 95 s). Tests check numbers, not speed;
# subprocesses the tests start (and pytest-xdist's workers) inherit the setting. Benchmarks never run under this file.
# Not for a run that selects the slow checks (`-m slow`, make test-slow): they have no time budget, and one of them
# (test_multirun's vmapped Adagrad MLET against sequential runs, float32, 1e-6) is validated with optimized code,
# whose rounding differs from the unoptimized code's by up to 1.5e-6 in one table entry of 14,648.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:  # xdist workers inherit the controller's choice
    _args = sys.argv[1:]
    _marks = _args[_args.index("-m") + 1] if "-m" in _args[:-1] else ""  # pyproject's own "not slow" is not in argv
    _level = 3 if "slow" in _marks and _marks.strip() != "not slow" else 0  # 3: XLA's default
    os.environ["XLA_FLAGS"] += f" --xla_backend_optimization_level={_level}"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

# Silent rank broadcasting hides shape bugs (equinox's conftest does the same).
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_collection_finish(session):
    # A test module that flips x64 globally at import would silently run every other test in float64.
    assert not jax.config.jax_enable_x64, "a test module enabled jax_enable_x64 globally; use jax.enable_x64()"


@pytest.fixture
def float64():
    """x64 for one test (modules opt in with ``pytestmark = pytest.mark.usefixtures("float64")``): a global config
    update at import would switch the whole session to x64."""
    with jax.enable_x64(True):
        yield
