"""The served model (mlet_jax.serving): one jax.export artifact, loaded without flax or the model code.

Reference: the trained (uncollapsed) model's own ``sigmoid(logits)`` in numpy float64; the served probabilities come
from a fresh Python process that imports only numpy, jax and ``mlet_jax.serving``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlet_jax import serving
from mlet_jax.data.base import batches
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import build_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer

VOCAB = (7, 13, 5)
BATCH_SIZES = (1, 7, 64)


def _trained(name, oov="error", steps=3):
    ds = make_synthetic(seed=1, n_train=256, n_valid=0, n_test=64, vocab_sizes=VOCAB, num_dense=3)
    spec = EmbeddingSpec("mlet", dim=4, inner_dim=8, projection_std=0.5, oov=oov)
    opts = {"dlrm": {"bottom_mlp": (8,), "top_mlp": (8,)}, "dcn": {"dnn": (8,), "cross_num": 1}}.get(name, {})
    model = build_model(name, ds.schema, spec, **opts)
    tr = Trainer(model, TrainConfig(OptimizerSpec("adagrad", lr=0.1)))
    state = tr.init(0, next(batches(ds.train, 64)))
    for _, b in zip(range(steps), batches(ds.train, 64, seed=0), strict=False):
        state, _ = tr.train_step(state, b)
    return ds, tr.model, state.params


def _reference(model, params, dense, ids):
    logits = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(dense, jnp.float32), jnp.asarray(ids)),
                        np.float64)
    return 1.0 / (1.0 + np.exp(-logits))


def _initialized(name="dlrm", oov="error", seed=0):
    """A model with random parameters of the right shapes (nothing compiled): for tests of the artifact itself."""
    ds = make_synthetic(seed=1, n_train=64, n_valid=0, n_test=64, vocab_sizes=VOCAB, num_dense=3)
    model = build_model(name, ds.schema, EmbeddingSpec("mlet", dim=4, inner_dim=8, projection_std=0.5, oov=oov),
                        bottom_mlp=(8,), top_mlp=(8,))
    shapes = jax.eval_shape(model.init, jax.random.key(0), ds.test.dense[:1], ds.test.ids[:1])["params"]
    rng = np.random.default_rng(seed)
    return ds, model, jax.tree_util.tree_map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(x.dtype), shapes)


_EXPORTED: dict = {}


@pytest.fixture
def exported(tmp_path_factory):
    """``name -> (artifact, dataset, reference probabilities)`` of a model trained 3 steps, made once per name."""

    def get(name):
        if name not in _EXPORTED:
            ds, model, params = _trained(name)
            path = serving.export(model, params, tmp_path_factory.mktemp(name) / f"{name}.mlet", schema=ds.schema)
            _EXPORTED[name] = (path, ds, _reference(model, params, ds.test.dense, ds.test.ids))
        return _EXPORTED[name]

    return get


@pytest.mark.parametrize("name", ["dlrm", *(pytest.param(n, marks=pytest.mark.slow)
                                            for n in ("dcn", "deepfm", "nfm", "autoint", "xdeepfm", "wdl"))])
def test_fresh_process_without_model_code_gives_the_trained_probabilities(exported, tmp_path, name):
    """Batch sizes 1, 7 and 64 from one program (symbolic batch): within 1e-5 of the trained model (DLRM by
    default; ``-m slow`` adds DCN and the other five models)."""
    path, ds, ref = exported(name)
    np.save(tmp_path / "dense.npy", ds.test.dense)
    np.save(tmp_path / "ids.npy", ds.test.ids)
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from mlet_jax import serving
        dense, ids = np.load({str(tmp_path / "dense.npy")!r}), np.load({str(tmp_path / "ids.npy")!r})
        predict = serving.load({str(path)!r})
        for bs in {BATCH_SIZES!r}:
            np.save({str(tmp_path)!r} + f"/out_{{bs}}.npy", predict(dense[:bs], ids[:bs]))
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "flax"
                                or m.startswith(("mlet_jax.models", "mlet_jax.embeddings", "mlet_jax.training")))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []  # neither flax nor the model code was imported
    for bs in BATCH_SIZES:
        got = np.load(tmp_path / f"out_{bs}.npy")
        assert got.shape == (bs,)
        np.testing.assert_allclose(got, ref[:bs], rtol=0, atol=1e-5, err_msg=f"{name} batch {bs}")
    assert np.ptp(ref) > 1e-3  # the probabilities differ between rows: the comparison means something


def test_manifest_holds_schema_offsets_and_policy(exported):
    path, ds, _ = exported("dlrm")
    m = serving.read_manifest(path)
    assert m["format"] == serving.FORMAT and m["oov"] == "error" and m["num_dense"] == 3
    assert [f["name"] for f in m["fields"]] == list(ds.schema.field_names)
    assert [f["vocab_size"] for f in m["fields"]] == list(VOCAB)
    assert [f["offset"] for f in m["fields"]] == [0, 7, 20]
    assert m["dense_names"] == list(ds.schema.dense_names)
    # collapsed: one [n, d] table, no MLET projection
    tables = {p["name"]: p["shape"] for p in m["params"]}
    assert tables["embeddings/table"] == [25, 4] and not any("projection" in n for n in tables)


def test_predict_validates_its_inputs(exported):
    path, ds, ref = exported("dlrm")
    predict = serving.load(path)
    dense, ids = ds.test.dense[:3].copy(), ds.test.ids[:3].copy()
    with pytest.raises(ValueError, match=r"dense must have shape \[batch, 3\], got \(3, 2\)"):
        predict(dense[:, :2], ids)
    with pytest.raises(ValueError, match=r"ids must have shape \[batch, 3\]"):
        predict(dense, ids[:, :2])
    with pytest.raises(ValueError, match="ids must be integers, got dtype float64"):
        predict(dense, ids.astype(np.float64))
    with pytest.raises(ValueError, match="dense must hold real numbers"):
        predict(dense.astype(str), ids)
    with pytest.raises(ValueError, match="dense has 2 rows but ids 3"):
        predict(dense[:2], ids)
    bad = dense.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"dense: feature 2 \('I3'\) is nan in row 1"):
        predict(bad, ids)
    unseen = ids.copy()
    unseen[2, 2] = 5
    with pytest.raises(ValueError, match=r"ids: field 2 \('C3'\) has id 5 in row 2, outside its vocabulary of 5 ids"):
        predict(dense, unseen)
    assert predict(dense[:0], ids[:0]).shape == (0,)
    np.testing.assert_allclose(predict(dense.astype(np.float64), ids.astype(np.int64)), ref[:3], atol=1e-5)


def test_row_policy_serves_unseen_ids_from_the_oov_rows(tmp_path):
    ds, model, params = _initialized(oov="row")
    path = serving.export(model, params, tmp_path / "row.mlet", schema=ds.schema)
    m = serving.read_manifest(path)
    assert m["oov"] == "row" and [f["offset"] for f in m["fields"]] == [0, 8, 22]  # one OOV row per field
    predict = serving.load(path)
    dense, ids = ds.test.dense[:4], ds.test.ids[:4].astype(np.int64)
    unseen = ids.copy()
    unseen[:, 1] = [13, 10**6, -3, 2**40]  # all outside field 1 (vocab 13)
    got = predict(dense, unseen)
    oov_ids = ids.copy()
    oov_ids[:, 1] = 13  # the trained model reads field 1's OOV row for it
    np.testing.assert_allclose(got, _reference(model, params, dense, oov_ids), rtol=0, atol=1e-5)
    assert np.abs(got - predict(dense, ids)).max() > 1e-6  # the OOV row is not one of the seen ids' rows


def test_export_never_replaces_a_foreign_file_and_load_refuses_one(tmp_path):
    ds, model, params = _initialized()
    foreign = tmp_path / "notes.mlet"
    foreign.write_text("my notes")
    with pytest.raises(ValueError, match="exists and is not an mlet_jax serving artifact"):
        serving.export(model, params, foreign)
    assert foreign.read_text() == "my notes"
    with pytest.raises(ValueError, match="is a folder"):
        serving.export(model, params, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        serving.export(model, params, tmp_path / "missing" / "m.mlet")
    with pytest.raises(ValueError, match="not an mlet_jax serving artifact"):
        serving.load(foreign)
    with pytest.raises(ValueError, match="does not exist"):
        serving.load(tmp_path / "nothing.mlet")
    # our own artifact is replaced in place (atomically: no temporary file is left)
    own = tmp_path / "own.mlet"
    serving.export(model, params, own, platforms=None)
    before = serving.load(own)(ds.test.dense[:8], ds.test.ids[:8])
    serving.export(model, _initialized(seed=1)[2], own, platforms=None)
    after = serving.load(own)(ds.test.dense[:8], ds.test.ids[:8])
    assert np.abs(after - before).max() > 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mlet", "own.mlet"]


def test_checkpoint_module_needs_no_model_code():
    import mlet_jax.checkpoint as ckpt

    src = open(ckpt.__file__).read()
    assert "mlet_jax.models" not in src and "export_inference" not in src


def test_cli_refuses_a_foreign_export_path_before_training(tmp_path, capsys):
    from mlet_jax import train

    foreign = tmp_path / "x.mlet"
    foreign.write_text("keep me")
    with pytest.raises(SystemExit) as e:
        train.main(["--export", str(foreign), "--data-option", "n_train=999999999"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and foreign.read_text() == "keep me"
    assert "--export: export path" in err and "is not an mlet_jax serving artifact" in err


@pytest.mark.slow
def test_cli_export_serves_the_test_auc(tmp_path):
    from sklearn.metrics import roc_auc_score

    from mlet_jax import train

    opts = ["--data-option", "n_train=512", "--data-option", "n_valid=0", "--data-option", "n_test=256",
            "--data-option", "vocab_sizes=[11,7,30]", "--data-option", "num_dense=2"]
    rec = train.main(["--model", "deepfm", "--embedding", "mlet", "--d", "4", "--k", "8", "--batch-size", "64",
                      "--model-option", "dnn=[8]", "--oov", "row", "--no-progress", *opts,
                      "--export", str(tmp_path / "m.mlet")])
    ds = make_synthetic(n_train=512, n_valid=0, n_test=256, vocab_sizes=[11, 7, 30], num_dense=2)
    predict = serving.load(rec["export"])
    assert predict.oov == "row"
    auc = roc_auc_score(ds.test.label, predict(ds.test.dense, ds.test.ids))
    assert abs(auc - rec["test_auc"]) < 1e-4


def test_readme_serving_example_runs(tmp_path, monkeypatch):
    import pathlib
    import re
    from types import SimpleNamespace

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Serving\n\n```python\n(.*?)```", text, re.S).group(1)
    ds, model, params = _initialized()
    ns = {"trainer": SimpleNamespace(model=model), "state": SimpleNamespace(params=params), "ds": ds}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), ns)
    np.testing.assert_allclose(ns["p_click"], _reference(model, params, ds.test.dense, ds.test.ids), atol=1e-5)
