"""mlet_jax.runtime: a command re-run with the malloc tunables reuses a freed 40 MiB buffer instead of mapping it
afresh, counted in page faults (a fresh mapping faults once per 4 KiB page it touches: 10,240 for 40 MiB); the
opt-out and a user's own settings are left alone; a block larger than a thread's heap faults per 2 MiB huge page;
bench_malloc runs each setting."""

import json
import os
import subprocess
import sys

import pytest

from mlet_jax import runtime

_CHILD = r"""
import ctypes, json, os, resource
from mlet_jax import runtime
again = runtime.reexec_with_tuned_malloc()  # may replace this process: everything above runs twice
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
print(json.dumps({"tuned": runtime.malloc_tuned(), "returned": again, "faults": (f1 - f0) / 10,
                  "tunables": os.environ.get("GLIBC_TUNABLES")}))
"""
PAGES = (40 << 20) // 4096
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")


def _run(**env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MLET_MALLOC_RERUN")}
    out = subprocess.run([sys.executable, "-c", _CHILD], env={**env, **env_extra}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux
def test_rerun_with_tunables_reuses_freed_buffers():
    on = _run(MLET_MALLOC_TUNING="1")
    assert on["tuned"] is True and on["returned"] is True and on["tunables"] == runtime.TUNABLES
    assert on["faults"] <= 0.02 * PAGES  # the freed buffer reused


@linux
def test_opt_out_and_users_own_thresholds_are_left_alone():
    off = _run(MLET_MALLOC_TUNING="0")
    assert off["tuned"] is False and off["returned"] is False and off["tunables"] is None
    assert off["faults"] >= 0.9 * PAGES  # every buffer a fresh mapping
    own = _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert own["returned"] is False and own["tunables"] == "glibc.malloc.trim_threshold=131072"
    own = _run(GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    assert own["returned"] is False and own["tunables"] == "glibc.malloc.hugetlb=0"
    other = _run(GLIBC_TUNABLES="glibc.malloc.tcache_count=7")  # another tunable: ours are added to it
    assert other["tuned"] is True and other["tunables"] == f"glibc.malloc.tcache_count=7:{runtime.TUNABLES}"


_THREAD_CHILD = r"""
import ctypes, json, resource, threading
from mlet_jax import runtime
runtime.reexec_with_tuned_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 80 << 20  # more than one of glibc's 64 MiB per-thread heaps holds: mapped afresh whatever the threshold
out = {}

def mapping(p):  # the smaps entry holding address p: its VmFlags ("hg": advised huge) and AnonHugePages (kB)
    entry = None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                entry = {} if lo <= p < hi else None
            elif entry is not None and head[0] == "VmFlags:":
                entry["flags"] = head[1:]
            elif entry is not None and head[0] == "AnonHugePages:":
                entry["huge_kb"] = int(head[1])
            if entry is not None and "flags" in entry:
                return entry
    return {}

def work():  # in a thread, as XLA's steps run: the thread allocates from its own arena
    for i in range(13):
        if i == 3:
            out["f0"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        if i == 12:
            out["f1"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            out["map"] = mapping(p)
        libc.free(p)

t = threading.Thread(target=work)
t.start()
t.join()
m = out["map"]
print(json.dumps({"faults": (out["f1"] - out["f0"]) / 10, "advised": "hg" in m.get("flags", []),
                  "huge_kb": m.get("huge_kb", 0)}))
"""


def _thp_madvise() -> bool:
    import platform

    lib, version = platform.libc_ver()
    if lib != "glibc" or tuple(int(x) for x in version.split(".")[:2]) < (2, 35):  # glibc.malloc.hugetlb: 2.35
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            return "[never]" not in fh.read()
    except OSError:
        return False


@linux
@pytest.mark.skipif(not _thp_madvise(), reason="glibc before 2.35, or the kernel's transparent huge pages are off")
def test_blocks_larger_than_a_thread_heap_fault_per_huge_page():
    def run(**extra):
        env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MLET_MALLOC_RERUN")}
        out = subprocess.run([sys.executable, "-c", _THREAD_CHILD], env={**env, **extra}, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    pages = (80 << 20) // 4096
    off, on = run(MLET_MALLOC_TUNING="0"), run(MLET_MALLOC_TUNING="1")
    assert not off["advised"] and off["faults"] >= 0.9 * pages  # 4 KiB pages, every block mapped afresh
    assert on["advised"]  # glibc asked the kernel for huge pages (madvise: "hg" in the mapping's VmFlags)
    if on["huge_kb"] == 0:
        pytest.skip("the kernel had no free huge pages to give")
    assert on["faults"] <= 0.1 * pages  # 2 MiB pages: ~40 faults per block instead of 20,480


def test_bench_malloc_runs_each_setting_in_a_fresh_process(tmp_path):
    from benchmarks import bench_malloc

    assert bench_malloc.SETTINGS["thp"] == runtime.TUNABLES  # the benchmark measures the library's setting
    out = tmp_path / "m.jsonl"
    rows = bench_malloc.main(["--toy", "--kinds", "single", "--batches", "32", "--rounds", "1", "--steps", "2",
                              "--repeats", "1", "--settings", "untuned", "thp", "--out", str(out)])
    assert [r["setting"] for r in rows] == ["untuned", "thp"]
    assert [r["malloc_tuned"] for r in rows] == [False, sys.platform.startswith("linux")]
    assert all(r["ms_per_step"] > 0 and r["faults_per_step"] >= 0 and r["batch"] == 32 for r in rows)
    assert len(out.read_text().splitlines()) == 2


def test_bench_malloc_argument_errors(capsys):
    from benchmarks import bench_malloc

    with pytest.raises(SystemExit) as e:
        bench_malloc.main(["--rounds", "0"])
    assert e.value.code == 2 and "--rounds: must be >= 1" in capsys.readouterr().err


def test_untuned_env_drops_only_what_the_rerun_added(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", f"glibc.malloc.tcache_count=7:{runtime.TUNABLES}")
    monkeypatch.setenv("MLET_MALLOC_RERUN", "1")
    env = runtime.untuned_env()
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=7" and "MLET_MALLOC_RERUN" not in env
    monkeypatch.setenv("GLIBC_TUNABLES", runtime.TUNABLES)
    assert "GLIBC_TUNABLES" not in runtime.untuned_env()
    assert runtime.untuned_env()["PATH"] == os.environ["PATH"]
