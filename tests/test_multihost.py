"""Two processes x 4 CPU devices (jax.distributed over gloo on 127.0.0.1) train like one process on one device.

The README's "Many devices" section shows these commands. Each case runs the command line three ways on the same
synthetic data (20 steps: 2 epochs of 10 batches of 64):

* one process, one device (the reference);
* two processes, each with 4 CPU devices, ``--mesh data=8`` (tables padded to a multiple of 8 rows and split over all
  8 devices, each process feeding its half of every batch);
* the same two processes stopped after epoch 1 and resumed from their checkpoint for epoch 2.

The final checkpoints are read back here with orbax: the 2 x 4 run's parameters (padding rows stripped) equal the
one-device run's within 1e-5 relative, and the resumed run equals the uninterrupted one exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

COMMON = ["--dataset", "synthetic", "--data-option", "n_train=640", "--data-option", "n_valid=0",
          "--data-option", "n_test=256", "--data-option", "vocab_sizes=[37,501,1203,90]",
          "--data-option", "num_dense=3", "--batch-size", "64", "--seed", "5", "--no-progress"]
CASES = {
    "dlrm-mlet-sgd": ["--model", "dlrm", "--embedding", "mlet", "--d", "4", "--k", "8",
                      "--model-option", "bottom_mlp=[8]", "--model-option", "top_mlp=[8]"],
    "dlrm-single-sgd": ["--model", "dlrm", "--embedding", "single", "--d", "4",
                        "--model-option", "bottom_mlp=[8]", "--model-option", "top_mlp=[8]"],
    "deepfm-mlet-adagrad": ["--model", "deepfm", "--embedding", "mlet", "--d", "4", "--k", "8",
                            "--model-option", "dnn=[16]"],
    "deepfm-single-adagrad": ["--model", "deepfm", "--embedding", "single", "--d", "4", "--model-option", "dnn=[16]"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
           + f" --xla_force_host_platform_device_count={devices}"}


def _one(args: list[str]) -> None:
    p = subprocess.run([sys.executable, "-m", "mlet_jax.train", *args], env=_env(1), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def _two(args: list[str]) -> None:
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "mlet_jax.train", *args, "--mesh", "data=8",
                               "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i)], env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]


def _params(ckpt_dir) -> dict:
    """The newest checkpoint's parameters as flat numpy arrays (padding rows stripped to the true row count)."""
    import jax
    import orbax.checkpoint as ocp
    from flax import traverse_util

    step = max(int(x) for x in os.listdir(ckpt_dir) if x.isdigit())
    path = os.path.join(ckpt_dir, str(step), "state")
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(path).item_metadata
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # read every process's shards into this process
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                                    getattr(meta, "tree", meta))
    out = {"state": ckptr.restore(path, target)}
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(out["state"]["params"]).items()}


@pytest.mark.parametrize("case", [c if c == "dlrm-mlet-sgd" else pytest.param(c, marks=pytest.mark.slow)
                                  for c in CASES])
def test_two_processes_by_four_devices_equal_one_device_and_resume_exactly(case, tmp_path):
    args = [*COMMON, *CASES[case]]
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    _one([*args, "--epochs", "2", "--checkpoint-dir", str(one)])
    _two([*args, "--epochs", "2", "--checkpoint-dir", str(two), "--out", str(tmp_path / "two.json")])
    _two([*args, "--epochs", "1", "--checkpoint-dir", str(resumed)])
    _two([*args, "--epochs", "2", "--checkpoint-dir", str(resumed)])
    ref, got, res = _params(one), _params(two), _params(resumed)
    rows = 37 + 501 + 1203 + 90  # 1831 rows: padded to 1832 on 8 devices
    assert got["embeddings/table"].shape[0] == 1832 and ref["embeddings/table"].shape[0] == rows
    assert not got["embeddings/table"][rows:].any()
    assert sorted(ref) == sorted(got)
    for k, want in ref.items():
        have = got[k][:rows] if k.endswith("table") else got[k]
        scale = max(np.abs(want).max(), 1e-12)
        assert np.abs(have - want).max() / scale <= 1e-5, k
        np.testing.assert_array_equal(res[k], got[k], err_msg=k)  # resumed == uninterrupted, bit for bit
    # the tables did move away from their initial values in 20 steps (the comparison is not of two inits)
    import json

    rec = json.loads((tmp_path / "two.json").read_text())
    assert rec["steps"] == 20 and rec["machine"]["processes"] == 2 and rec["machine"]["devices"] == 8
