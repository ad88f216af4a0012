"""Training: the jitted step against a hand-computed SGD step, determinism, early stopping, NaN guard, CLI."""

import json

import jax
import numpy as np
import optax
import pytest

from mlet_jax import train as train_cli
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.metrics import roc_auc
from mlet_jax.models import build_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import NonFiniteLossError, TrainConfig, Trainer, fit

SMALL = dict(n_train=6000, n_valid=1000, n_test=2000, vocab_sizes=(7, 50, 400, 2000))


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(0, **SMALL)


def small_dlrm(ds, kind="mlet", d=4):
    return build_model("dlrm", ds.schema, EmbeddingSpec(kind, d, 16 if kind == "mlet" else None),
                       bottom_mlp=(16,), top_mlp=(16,))


def np_bce(logits, y):
    logits = np.asarray(logits, np.float64)
    return np.mean(np.logaddexp(0, logits) - y * logits)


@pytest.mark.parametrize("sparse", [True, False])
def test_train_step_is_one_sgd_step_on_mean_bce(ds, sparse):
    model = small_dlrm(ds)
    tr = Trainer(model, TrainConfig(OptimizerSpec("sgd", 0.2), sparse_tables=sparse, grad_norm=True))
    batch = {k: v[:64] for k, v in {"dense": ds.train.dense, "ids": ds.train.ids, "label": ds.train.label}.items()}
    state = tr.init(0, batch)
    p0 = jax.tree_util.tree_map(np.array, state.params)

    def loss(p):
        return optax.sigmoid_binary_cross_entropy(model.apply({"params": p}, batch["dense"], batch["ids"]),
                                                  batch["label"]).mean()

    g = jax.grad(loss)(p0)
    want = jax.tree_util.tree_map(lambda p, g: p - 0.2 * g, p0, g)
    new, m = tr.train_step(state, batch)
    logits0 = model.apply({"params": p0}, batch["dense"], batch["ids"])
    assert float(m["loss"]) == pytest.approx(np_bce(logits0, batch["label"]), rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert int(new.step) == 1
    # the sparse path's norm runs over gathered slots (repeats carry zero gradient): the same float64 number
    g_norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree_util.tree_leaves(g)))
    assert float(m["grad_norm"]) == pytest.approx(g_norm, rel=1e-5)
    assert "grad_norm" not in Trainer(model, TrainConfig(OptimizerSpec("sgd", 0.2), sparse_tables=sparse)).train_step(
        tr.init(0, batch), batch)[1]


def test_fit_is_deterministic_and_learns(ds):
    tr = Trainer(small_dlrm(ds), TrainConfig(OptimizerSpec("adagrad", 0.02)))
    s1, h1 = fit(tr, ds.train, batch_size=128, seed=3, valid=ds.valid, progress=False, log_every=10)
    s2, h2 = fit(tr, ds.train, batch_size=128, seed=3, valid=ds.valid, progress=False, log_every=10)
    assert h1.losses == h2.losses and h1.evals == h2.evals
    assert int(s1.step) == len(ds.train) // 128
    m = tr.evaluate(s1.params, ds.test)
    assert m["auc"] == pytest.approx(roc_auc(ds.test.label, tr.predict(s1.params, ds.test)), abs=1e-12)
    assert m["auc"] > 0.6
    assert h1.samples_per_second > 0 and h1.train_samples == (int(s1.step) - 1) * 128


def test_early_stopping_returns_best(ds):
    tr = Trainer(small_dlrm(ds, "single"), TrainConfig(OptimizerSpec("sgd", 0.2)))
    state, h = fit(tr, ds.train, batch_size=64, epochs=3, seed=0, valid=ds.valid, eval_every=10,
                   early_stopping_patience=0, progress=False)
    aucs = [e["auc"] for e in h.evals]
    assert h.stopped_early and aucs[-1] <= max(aucs[:-1])
    assert tr.evaluate(state.params, ds.valid)["auc"] == pytest.approx(max(aucs), abs=1e-9)
    # the whole state of the best step comes back, not the best parameters with the last step's optimizer state:
    # training on from it equals training on from a fresh run stopped at that step
    assert int(state.step) == h.best_step < h.evals[-1]["step"]
    rerun, _ = fit(tr, ds.train.take(slice(0, 64 * h.best_step)), batch_size=64, seed=0, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(rerun.opt_state), jax.tree_util.tree_leaves(state.opt_state),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="validation"):
        fit(tr, ds.train, early_stopping_patience=1, progress=False)


def test_fit_compiles_the_train_step_once(ds):
    # Two epochs, validation in between: one compiled step (same shapes and dtypes every batch, no retrace). The
    # step is one module-level jit with the trainer static, so its cache grows by one entry for a new trainer, and
    # an equal trainer (a seed sweep) reuses it.
    from mlet_jax.training import _train_step

    tr = Trainer(small_dlrm(ds, "mlet", d=3), TrainConfig(OptimizerSpec("adagrad", 0.02)))
    before = _train_step._cache_size()
    state, h = fit(tr, ds.train.take(slice(0, 640)), batch_size=64, epochs=2, seed=1, valid=ds.valid, progress=False)
    assert int(state.step) == 20 and len(h.evals) == 2
    assert _train_step._cache_size() == before + 1
    twin = Trainer(small_dlrm(ds, "mlet", d=3), TrainConfig(OptimizerSpec("adagrad", 0.02)))
    fit(twin, ds.train.take(slice(0, 640)), batch_size=64, seed=2, progress=False)
    assert twin is not tr and _train_step._cache_size() == before + 1


def test_nan_loss_stops_with_step(ds):
    tr = Trainer(small_dlrm(ds, "single"), TrainConfig(OptimizerSpec("sgd", 0.2)))
    bad = ds.train.take(slice(0, 2048))
    bad.dense[:] = np.nan
    with pytest.raises(NonFiniteLossError, match="became nan at step 1;"):
        fit(tr, bad, batch_size=64, seed=0, progress=False)


def test_failing_fits_leave_no_prefetch_threads(ds):
    # Every exit path of fit joins its prefetch thread: 20 failing fits in one process leave the thread count as it
    # was (an abandoned producer used to keep running, and interpreter exit could then abort).
    import threading

    tr = Trainer(small_dlrm(ds, "single"), TrainConfig(OptimizerSpec("sgd", 0.2)))
    bad = ds.train.take(slice(0, 2048))
    bad.dense[:] = np.nan
    before = threading.active_count()
    for _ in range(20):
        with pytest.raises(NonFiniteLossError):
            fit(tr, bad, batch_size=64, seed=0, progress=False)
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name == "mlet_jax-prefetch"]


def test_fit_rejects_bad_arguments(ds):
    tr = Trainer(small_dlrm(ds, "single"))
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(tr, ds.train.take(slice(0, 10)), batch_size=64, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(tr, ds.train, batch_size=0, progress=False)


def test_cli_writes_json_with_required_fields(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--model", "dlrm", "--embedding", "mlet", "--d", "4", "--k", "8", "--seed", "1", "--out", str(out),
            "--no-progress", "--model-option", "bottom_mlp=[16]", "--model-option", "top_mlp=[16]"]
    for k, v in SMALL.items():
        argv += ["--data-option", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}"]
    rec = train_cli.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(out.read_text())
    for key in ("test_auc", "test_logloss", "test_pr_auc", "train_samples_per_s", "params_train",
                "params_inference", "settings", "collapse_max_abs_diff"):
        assert key in rec
    n = sum(SMALL["vocab_sizes"])
    assert rec["params_train"] - rec["params_inference"] == n * 8 + 4 * 8 * 4 - n * 4
    assert rec["collapse_max_abs_diff"] <= 1e-5
    assert rec["settings"]["optimizer"] == "sgd" and rec["settings"]["lr"] == 0.2
    assert rec["settings"]["projection_std"] == 0.25


@pytest.mark.parametrize("argv,msg", [(["--embedding", "mlet"], "needs --k"), (["--d", "0"], ">= 1"),
                                      (["--model", "nope"], "invalid choice"),
                                      (["--data-option", "noequals"], "KEY=VALUE"),
                                      (["--mesh", "data=0"], "--mesh"),
                                      (["--checkpoint-every", "5"], "--checkpoint-dir"),
                                      (["--out", "/"], "is a folder"),
                                      (["--out", "/no/such/dir/r.json"], "does not exist"),
                                      (["--coordinator-address", "127.0.0.1:1"], "--num-processes"),
                                      (["--num-processes", "2", "--process-id", "2"], "--process-id must be <"),
                                      (["--lr", "inf"], "--lr must be finite"),
                                      (["--weight-decay", "-1"], "--weight-decay must be"),
                                      (["--eval-every", "-5"], "--eval-every must be >= 1"),
                                      (["--embedding", "mlet", "--d", "16", "--k", "8"], "--k must be >= --d"),
                                      (["--k", "64"], "no meaning with --embedding single"),
                                      (["--model-option", "dnn=[256,"], "not valid JSON"),
                                      (["--sparse-tables", "maybe"], "expected auto, on or off"),
                                      (["--model", "deepfm", "--weight-decay", "1e-4"], "--sparse-tables off")])
def test_cli_bad_arguments(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_table_lr_multiplier_scales_only_tables():
    cfg = train_cli.RunConfig(model="deepfm", table_lr_mult=4.0)
    tc = cfg.train_config
    assert tc.optimizer.lr == pytest.approx(0.02) and tc.tables.lr == pytest.approx(0.08)
