"""Many runs in one vmapped program (mlet_jax.multirun): each run equals its own sequential run.

The reference for every run is the single-run path (``Trainer.init(seed)`` + ``Trainer.train_step`` with that run's
learning rates and projection std, on the same batches), itself tested against numpy and torch transcriptions.
Float32 runs agree within 1e-6 (the vmapped matmuls round differently), float64 runs within 1e-12.
"""

import argparse
import dataclasses
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mlet_jax import multirun, training
from mlet_jax.data import batches, make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import build_model
from mlet_jax.multirun import MultiTrainer, Runs, parse_seeds
from mlet_jax.optim import OptimizerSpec
from mlet_jax.train import main
from mlet_jax.training import TrainConfig, Trainer

VOCAB = [37, 501, 1203, 90]
SMALL = {"dlrm": {"bottom_mlp": (8,), "top_mlp": (8,)}, "deepfm": {"dnn": (16, 8), "dnn_dropout": 0.25}}
STEPS = 8


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic(seed=1, n_train=STEPS * 64, n_valid=0, n_test=300, vocab_sizes=VOCAB, num_dense=3)
    return ds, list(batches(ds.train, 64, seed=7))


SCHEMA = make_synthetic(seed=1, n_train=8, n_valid=0, n_test=8, vocab_sizes=VOCAB, num_dense=3).schema


def _model(name, kind, std, dtype):
    spec = EmbeddingSpec(kind, 4, 8 if kind == "mlet" else None, projection_std=std)
    return build_model(name, SCHEMA, spec, param_dtype=dtype, **SMALL[name])


def _config(opt, lr, mult, sparse):
    o = OptimizerSpec(opt, lr)
    return TrainConfig(o, o.scaled(mult) if mult != 1.0 else None, sparse_tables=sparse)


def _check(data, name, kind, opt, sparse, dtype, tol, runs, evaluate=True):
    ds, bl = data
    stds = runs.projection_std or (0.5,) * runs.size
    base = _config(opt, runs.lr[0], 1.0, sparse)
    mt = MultiTrainer(_model(name, kind, stds[0], dtype), base, runs)
    state = mt.init(bl[0])
    inits = [jax.tree_util.tree_map(np.asarray, mt.run_state(state, i).params) for i in range(runs.size)]
    losses = []
    for b in bl:
        state, m = mt.train_step(state, b)
        losses.append(np.asarray(m["loss"]))
    assert state.params["embeddings"]["table"].dtype == dtype and np.asarray(state.step).tolist() == [STEPS] * runs.size
    multi_eval = mt.evaluate(state.params, ds.test) if evaluate else None
    for i in range(runs.size):
        model = _model(name, kind, stds[i], dtype)
        tr = Trainer(model, _config(opt, runs.lr[i], runs.table_lr_mult[i], sparse))
        # a fresh state does not depend on the learning rates: one compiled init serves every run of this model
        ref = Trainer(model, base).init(runs.seeds[i], bl[0])
        for a, b in zip(jax.tree_util.tree_leaves(inits[i]), jax.tree_util.tree_leaves(ref.params), strict=True):
            # the single run's init (vmapped erf_inv of a normal init may round one ulp differently)
            np.testing.assert_allclose(a, np.asarray(b), rtol=tol, atol=0)
        ref_losses = []
        for b in bl:
            ref, m = tr.train_step(ref, b)
            ref_losses.append(float(m["loss"]))
        np.testing.assert_allclose([x[i] for x in losses], ref_losses, rtol=tol, atol=tol)
        got = mt.run_state(state, i)
        for (path, a), b in zip(traverse_util.flatten_dict(got.params).items(),
                                traverse_util.flatten_dict(ref.params).values(), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol, err_msg="/".join(path))
        for a, b in zip(jax.tree_util.tree_leaves((got.opt_state, got.table_opt_state)),
                        jax.tree_util.tree_leaves((ref.opt_state, ref.table_opt_state)), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)
        if evaluate:
            want = tr.evaluate(ref.params, ds.test)
            for k in ("auc", "logloss", "pr_auc"):
                assert abs(multi_eval[i][k] - want[k]) <= max(tol, 1e-9), (i, k)
    # the runs really differ (seeds and settings reach the step)
    assert np.ptp(losses[-1]) > 1e-4


def test_sgd_mlet_row_sparse_dlrm_float32(data):
    runs = Runs(seeds=(0, 3), lr=(0.2, 0.05), table_lr_mult=(1.0, 4.0))  # slow cases vary projection_std too
    _check(data, "dlrm", "mlet", "sgd", None, jnp.float32, 1e-6, runs, evaluate=False)


CASES = [  # (model, embedding, optimizer, sparse_tables, x64)
    ("dlrm", "single", "sgd", False, False),
    ("dlrm", "mlet", "adagrad", None, False),
    ("deepfm", "single", "adagrad", None, False),
    ("deepfm", "mlet", "adagrad", False, False),
    ("deepfm", "mlet", "sgd", None, False),
    ("dlrm", "mlet", "sgd", None, True),
    ("dlrm", "single", "adagrad", False, True),
    ("deepfm", "mlet", "adagrad", None, True),
    ("deepfm", "single", "sgd", False, True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind", "opt", "sparse", "x64"), CASES)
def test_runs_equal_sequential_runs(data, name, kind, opt, sparse, x64):
    lr = (0.1, 0.03, 0.05) if opt == "sgd" else (0.02, 0.05, 0.01)
    runs = Runs(seeds=(4, 0, 9), lr=lr, table_lr_mult=(1.0, 3.0, 0.5),
                projection_std=(0.5, 0.25, 1.0) if kind == "mlet" else None)
    with jax.enable_x64(x64):
        _check(data, name, kind, opt, sparse, jnp.float64 if x64 else jnp.float32, 1e-12 if x64 else 1e-6, runs)


def test_parse_seeds():
    assert parse_seeds("0-7") == tuple(range(8))
    assert parse_seeds("0,3,5") == (0, 3, 5)
    assert parse_seeds("2-4,9") == (2, 3, 4, 9)
    assert parse_seeds("11") == (11,)
    for bad in ("", "a", "5-2", "1,1", "0-3,2", "1,,2", "-1", "1-", " 1", str(2**31), "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)


def test_runs_validation():
    with pytest.raises(ValueError, match="seeds"):
        Runs(seeds=())
    with pytest.raises(ValueError, match="lr has 1 entries"):
        Runs(seeds=(0, 1), lr=(0.1,))
    with pytest.raises(ValueError, match="table_lr_mult entries"):
        Runs(seeds=(0,), table_lr_mult=(0.0,))
    with pytest.raises(ValueError, match="projection_std entries"):
        Runs(seeds=(0,), projection_std=(float("nan"),))
    single = _model("dlrm", "single", 0.25, jnp.float32)
    with pytest.raises(ValueError, match="projection_std per run needs MLET"):
        MultiTrainer(single, TrainConfig(OptimizerSpec("sgd", 0.1)), Runs((0, 1), projection_std=(0.1, 0.2)))
    tables = TrainConfig(OptimizerSpec("sgd", 0.1), OptimizerSpec("adagrad", 0.02))
    with pytest.raises(ValueError, match="give table_lr_mult"):
        MultiTrainer(single, tables, Runs((0, 1), lr=(0.1, 0.2)))
    lr, table = MultiTrainer(single, tables, Runs((0, 1))).learning_rates()
    assert lr.tolist() == [0.1, 0.1] and table.tolist() == [0.02, 0.02]  # the config's own tables without a sweep
    lr, table = MultiTrainer(single, tables, Runs((0, 1), lr=(0.1, 0.3), table_lr_mult=(2.0, 0.5))).learning_rates()
    assert table.tolist() == [0.1 * 2.0, 0.3 * 0.5]


TINY = ["--model", "dlrm", "--embedding", "mlet", "--d", "4", "--k", "8", "--model-option", "bottom_mlp=[8]",
        "--model-option", "top_mlp=[8]", "--data-option", "n_train=640", "--data-option", "n_valid=0",
        "--data-option", "n_test=256", "--data-option", "vocab_sizes=[37,501,1203,90]", "--batch-size", "64",
        "--no-progress"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--seeds", "3-1"], "ranges ascending"),
    (["--seeds", "x"], "expected seeds"),
    (["--seeds", "1,1"], "repeat"),
    (["--seeds", "0-3", "--seed", "2"], "--seed and --seeds"),
    (["--seeds", "0-1", "--mesh", "data=1"], "--mesh is not supported with --seeds"),
    (["--seeds", "0-1", "--checkpoint-dir", "ck"], "--checkpoint-dir is not supported"),
    (["--seeds", "0-1", "--early-stopping", "2"], "--early-stopping is not supported"),
])
def test_cli_usage_errors(capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main(TINY + extra)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_foreign_out(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--seeds", "0-1", "--out", str(out)])
    assert e.value.code == 2 and "was not written by mlet_jax" in capsys.readouterr().err
    assert out.read_text() == "my notes\n"


@pytest.mark.slow
def test_cli_seeds_match_single_runs(tmp_path):
    """``--seeds 2,5`` writes one JSON line per seed; the first (its seed orders the batches) is ``--seed 2``."""
    out = tmp_path / "runs.jsonl"
    cmd = [sys.executable, "-m", "mlet_jax.train", *TINY, "--log-every", "5"]
    multi = subprocess.run(cmd + ["--seeds", "2,5", "--out", str(out)], capture_output=True, text=True, check=True)
    lines = [json.loads(x) for x in multi.stdout.splitlines() if x.startswith("{")]
    assert lines == [json.loads(x) for x in out.read_text().splitlines()]
    single = json.loads(subprocess.run(cmd + ["--seed", "2"], capture_output=True, text=True,
                                       check=True).stdout.splitlines()[-1])
    assert [r["settings"]["seed"] for r in lines] == [2, 5]
    assert set(single) <= set(lines[0]) and set(single["settings"]) == set(lines[0]["settings"])
    assert lines[0]["multirun"] == {**lines[0]["multirun"], "runs": 2, "index": 0, "data_seed": 2}
    for k in ("test_auc", "test_logloss", "test_pr_auc", "final_loss", "collapse_max_abs_diff"):
        assert abs(lines[0][k] - single[k]) <= 1e-6, k
    assert abs(lines[1]["test_logloss"] - single["test_logloss"]) > 1e-4  # seed 5 is another run
    assert lines[0]["steps"] == single["steps"] == 10
    # rerunning into its own output is allowed
    subprocess.run(cmd + ["--seeds", "2,5", "--out", str(out)], capture_output=True, text=True, check=True)


def test_state_layout(data):
    """Every leaf carries the run axis except the shared dedup scratch; run_state gives a single-run state."""
    _, bl = data
    model = _model("dlrm", "mlet", 0.25, jnp.float32)
    mt = MultiTrainer(model, _config("sgd", 0.2, 1.0, None), Runs((0, 3)))
    dense, ids = bl[0]["dense"][:1], bl[0]["ids"][:1]
    hp = mt.hyperparameters()
    st = jax.eval_shape(functools.partial(multirun._init_many, mt.program), np.array([0, 3]), hp["projection_std"],
                        dense, ids)
    key, rng = jax.random.split(jax.random.key(3))
    ref = jax.eval_shape(functools.partial(training._init_state, Trainer(model, mt.config)), key, rng, dense, ids)
    assert st.dedup.shape == ref.dedup.shape
    for a, b in zip(jax.tree_util.tree_leaves((st.params, st.opt_state, st.table_opt_state, st.step)),
                    jax.tree_util.tree_leaves((ref.params, ref.opt_state, ref.table_opt_state, ref.step)), strict=True):
        assert a.shape == (2, *b.shape) and a.dtype == b.dtype
    one = jax.eval_shape(lambda s: mt.run_state(s, 1), st)
    assert jax.tree_util.tree_structure(one) == jax.tree_util.tree_structure(ref)


@pytest.mark.slow
def test_sweeps_share_one_compiled_step(data):
    """The learning rates are arguments: two sweeps of the same size compile one step (and one init)."""
    _, bl = data
    model = _model("dlrm", "single", 0.25, jnp.float32)
    before = multirun._step_many._cache_size(), multirun._init_many._cache_size()
    for lr in (0.1, 0.3):
        tables = TrainConfig(OptimizerSpec("sgd", lr), OptimizerSpec("sgd", 2 * lr))
        mt = MultiTrainer(model, tables, Runs((0, 1), lr=(lr, lr / 2), table_lr_mult=(1.0, 2.0)))
        mt.train_step(mt.init(bl[0]), bl[0])
    assert (multirun._step_many._cache_size(), multirun._init_many._cache_size()) == (before[0] + 1, before[1] + 1)


@pytest.mark.slow
def test_run_many_equals_run():
    """run_many's records equal mlet_jax.train.run's for the same settings (one seed, so one batch order)."""
    from mlet_jax.train import RunConfig, load, run

    base = RunConfig(model="deepfm", embedding="mlet", d=4, k=8, batch_size=64, seed=2,
                     data_options=(("n_train", 640), ("n_valid", 128), ("n_test", 256), ("vocab_sizes", tuple(VOCAB)),
                                   ("num_dense", 3)), model_options=(("dnn", (16, 8)),))
    cfgs = [base, dataclasses.replace(base, lr=0.05, table_lr_mult=3.0, projection_std=0.2)]
    ds = load(base)
    many = multirun.run_many(cfgs, ds, log_every=5)
    for cfg, got in zip(cfgs, many, strict=True):
        want = run(cfg, ds, log_every=5)
        assert got["settings"] == want["settings"] and got["steps"] == want["steps"] == 10
        for k in ("test_auc", "test_logloss", "test_pr_auc", "final_loss", "collapse_max_abs_diff"):
            # relative for the summed loss (~38): one float32 ulp there is 3.8e-6
            assert abs(got[k] - want[k]) <= 1e-6 * max(1.0, abs(want[k])), k
        assert got["valid"]["step"] == want["valid"]["step"] == 10
        assert abs(got["valid"]["logloss"] - want["valid"]["logloss"]) <= 1e-6
    with pytest.raises(ValueError, match="differ only in"):
        multirun.check_configs([base, dataclasses.replace(base, d=8, k=8)])
    with pytest.raises(ValueError, match="--mesh is a single-run setting"):
        multirun.check_configs([dataclasses.replace(base, mesh="data=1")])
