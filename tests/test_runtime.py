"""mlet_jax.runtime.tune_malloc: with it, a freed 40 MiB buffer is reused instead of re-mapped, counted in page
faults (a fresh mapping faults once per 4 KiB page it touches: 10,240 for 40 MiB); the opt-out leaves glibc as is."""

import json
import os
import subprocess
import sys

import pytest

_CHILD = r"""
import ctypes, json, resource
from mlet_jax import runtime
tuned = runtime.tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 40 << 20

def touch():  # glibc's own malloc and free (numpy asks the kernel for huge pages), every byte written
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)

for _ in range(3):  # let glibc's dynamic threshold settle (it rises to 32 MiB, still below 40)
    touch()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    touch()
f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"tuned": tuned, "again": runtime.tune_malloc(), "faults": (f1 - f0) / 10}))
"""


def _run(env_extra):
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_tuned_malloc_reuses_freed_buffers_and_opt_out_does_not():
    pages = (40 << 20) // 4096
    off = _run({"MLET_MALLOC_TUNING": "0"})
    on = _run({"MLET_MALLOC_TUNING": "1"})
    assert off["tuned"] is False and on["tuned"] is True and on["again"] is True
    assert off["faults"] >= 0.9 * pages  # every buffer a fresh mapping
    assert on["faults"] <= 0.02 * pages  # the freed buffer reused


def test_bench_malloc_runs_both_settings_in_fresh_processes(tmp_path):
    from benchmarks import bench_malloc

    out = tmp_path / "m.jsonl"
    rows = bench_malloc.main(["--toy", "--kinds", "single", "--batches", "32", "--rounds", "1", "--steps", "2",
                              "--repeats", "1", "--out", str(out)])
    assert [r["malloc_tuned"] for r in rows] == [False, sys.platform.startswith("linux")]
    assert all(r["ms_per_step"] > 0 and r["faults_per_step"] >= 0 and r["batch"] == 32 for r in rows)
    assert [r["machine"]["malloc_tuned"] for r in rows] == [False, False]  # the parent's own allocator is untouched
    assert len(out.read_text().splitlines()) == 2


def test_bench_malloc_argument_errors(capsys):
    from benchmarks import bench_malloc

    with pytest.raises(SystemExit) as e:
        bench_malloc.main(["--rounds", "0"])
    assert e.value.code == 2 and "--rounds: must be >= 1" in capsys.readouterr().err
