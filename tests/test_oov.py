"""Ids outside their field's vocabulary (mlet_jax.oov): never another field's row, under each policy and on every path.

References are numpy rows picked by hand from the fused table: field 0 owns rows 0..2 and field 1 rows 3..7
(``"error"``), or 0..2 + OOV row 3 and 4..8 + OOV row 9 (``"row"``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlet_jax import oov as oov_lib
from mlet_jax import row_sparse
from mlet_jax.data.base import Schema, Split
from mlet_jax.embeddings import Embeddings, EmbeddingSpec
from mlet_jax.models.deepfm import DeepFM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer

VOCAB = (3, 5)


def _lookup(oov, ids, slots=None, kind="single"):
    spec = EmbeddingSpec(kind, dim=2, inner_dim=3 if kind == "mlet" else None, oov=oov)
    emb = Embeddings(VOCAB, spec, slots=slots)
    ids = jnp.asarray(ids, jnp.int32)
    params = emb.init(jax.random.key(0), ids)["params"]
    return np.asarray(emb.apply({"params": params}, ids)), {k: np.asarray(v) for k, v in params.items()}, emb


def test_error_policy_clips_into_the_own_field_and_keeps_the_table():
    out, p, emb = _lookup("error", [[3, 0], [-1, 9], [2, 4]])
    t = p["table"]
    assert t.shape == (8, 2) and emb.n_rows == 8  # no extra rows: the default's parameters are unchanged
    # id 3 of field 0 is its own last row (2), not field 1's row 0 (3); field 1's 9 is its last row (7)
    np.testing.assert_array_equal(out[0], t[[2, 3]])
    np.testing.assert_array_equal(out[1], t[[0, 7]])
    np.testing.assert_array_equal(out[2], t[[2, 7]])
    assert not np.array_equal(out[0, 0], t[3])


def test_row_policy_maps_every_unseen_id_to_its_field_oov_row():
    out, p, emb = _lookup("row", [[3, 0], [-1, 99], [2, 4], [-7, 5]])
    t = p["table"]
    assert t.shape == (10, 2) and emb.table_sizes == (4, 6)
    np.testing.assert_array_equal(out[0], t[[3, 4]])
    np.testing.assert_array_equal(out[1], t[[3, 9]])
    np.testing.assert_array_equal(out[2], t[[2, 8]])
    np.testing.assert_array_equal(out[3], t[[3, 9]])


@pytest.mark.parametrize("oov", ["error", "row"])
def test_mlet_projects_the_row_of_the_own_field(oov):
    out, p, _ = _lookup(oov, [[3, 0], [1, 12]], kind="mlet")
    t, proj = p["table"].astype(np.float64), p["projection"].astype(np.float64)
    rows = {"error": [[2, 3], [1, 7]], "row": [[3, 4], [1, 9]]}[oov]
    ref = np.stack([np.stack([t[r[0]] @ proj[0], t[r[1]] @ proj[1]]) for r in rows])
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("oov", ["error", "row"])
def test_bags_pool_the_own_field_and_skip_padding(oov):
    # field 0 is a bag of 2 slots (-1 pads), field 1 one slot
    out, p, _ = _lookup(oov, [[3, -1, 0], [1, 7, 2], [-1, -1, 5]], slots=(2, 1))
    t = p["table"].astype(np.float64)
    if oov == "error":
        ref = [[t[2], t[3]], [t[1] + t[2], t[5]], [0 * t[0], t[7]]]
    else:
        ref = [[t[3], t[4]], [t[1] + t[3], t[6]], [0 * t[0], t[9]]]
    np.testing.assert_allclose(out, np.asarray(ref), rtol=1e-6, atol=1e-7)


def test_host_check_names_the_field_the_id_and_the_vocabulary():
    check = oov_lib.check_ids
    with pytest.raises(ValueError, match=r"field 0 \('C1'\) has id 3 in row 0, outside its vocabulary of 3 ids"):
        check(np.array([[3, 0]]), VOCAB, None, "error", field_names=("C1", "C2"))
    with pytest.raises(ValueError, match=r"field 1 has id -1 in row 1.*of 5 ids \(0 \.\. 4\)"):
        check(np.array([[0, 0], [0, -1]]), VOCAB, None, "error")
    with pytest.raises(ValueError, match=r"field 0 has id -2 .*\(-1 \(bag padding\) \.\. 2\)"):
        check(np.array([[-2, -1, 0]]), VOCAB, (2, 1), "error")
    with pytest.raises(ValueError, match="ids must be integers"):
        check(np.array([[0.0, 1.0]]), VOCAB, None, "error")
    with pytest.raises(ValueError, match=r"shape \[batch, 2\]"):
        check(np.array([0, 1]), VOCAB, None, "error")
    with pytest.raises(ValueError, match="oov policy"):
        EmbeddingSpec(oov="hash")
    ok = check(np.array([[2, 4]], np.int64), VOCAB, None, "error")
    assert ok.dtype == np.int32 and ok.tolist() == [[2, 4]]
    np.testing.assert_array_equal(check(np.array([[-1, -1, 4]]), VOCAB, (2, 1), "error"), [[-1, -1, 4]])


def test_row_policy_accepts_any_id_and_int64_cannot_wrap_into_the_vocabulary():
    ids = np.array([[2**32 + 1, 2**40], [-(2**33), 4]], np.int64)  # 2**32 + 1 would wrap to 1 as int32
    host = oov_lib.check_ids(ids, VOCAB, None, "row")
    rows = np.asarray(oov_lib.device_rows(host, VOCAB, None, "row"))
    np.testing.assert_array_equal(rows, [[3, 9], [3, 8]])


@pytest.mark.parametrize("oov,kind", [("row", "single"), pytest.param("row", "mlet", marks=pytest.mark.slow),
                                       pytest.param("error", "mlet", marks=pytest.mark.slow)])
def test_row_sparse_step_equals_dense_and_moves_only_the_mapped_rows(oov, kind):
    """A device batch skips the host check, so the in-jit policy alone keeps every id in its field. The batch uses 9
    distinct rows under "row": more than the 8 the vocabularies alone allow, so the compact step must size its
    capacity by the tables' rows (OOV rows included) or it would drop rows."""
    spec = EmbeddingSpec(kind, dim=2, inner_dim=3 if kind == "mlet" else None, oov=oov)
    model = DeepFM(VOCAB, 1, spec, dnn=())
    f0, f1 = [0, 1, 3, 7] * 4, [0, 1, 2, 3, 4, 5, 9, -1] * 2  # 3, 7 are outside field 0; 5, 9, -1 outside field 1
    ids = jnp.asarray(np.stack([f0, f1], axis=1), jnp.int32)
    rng = np.random.default_rng(0)
    batch = {"dense": jnp.asarray(rng.normal(size=(16, 1)), jnp.float32), "ids": ids,
             "label": jnp.asarray(rng.integers(0, 2, 16), jnp.float32)}
    out = {}
    for sparse in (True, False):
        tr = Trainer(model, TrainConfig(OptimizerSpec("sgd", lr=0.5), sparse_tables=sparse))
        state = tr.init(0, batch)
        before = {p: np.asarray(t) for p, t in row_sparse.split_tables(state.params, tr.table_paths)[0].items()}
        state, _ = tr.train_step(state, batch)
        after = row_sparse.split_tables(state.params, tr.table_paths)[0]
        out[sparse] = {p: (before[p], np.asarray(after[p])) for p in before}
    # rows by hand: "row" sends 3, 7 to field 0's OOV row 3 and 5, 9, -1 to field 1's OOV row 9 (field 1 from 4);
    # "error" clips 3, 7 to row 2 and 5, 9 to row 7, and -1 to field 1's row 0 (3)
    want = {"row": {0, 1, 3, 4, 5, 6, 7, 8, 9}, "error": {0, 1, 2, 3, 4, 5, 6, 7}}[oov]
    for p, (b, a) in out[True].items():
        np.testing.assert_allclose(a, out[False][p][1], rtol=1e-5, atol=1e-7, err_msg=str(p))
        assert set(np.flatnonzero(np.any(a != b, axis=1)).tolist()) == want, p


def test_trainer_refuses_a_host_batch_with_an_unseen_id_and_evaluation_too():
    model = DeepFM(VOCAB, 1, EmbeddingSpec("single", dim=2), dnn=())
    tr = Trainer(model, TrainConfig(OptimizerSpec("sgd", lr=0.1)))
    good = {"dense": np.ones((2, 1), np.float32), "ids": np.array([[0, 1], [2, 4]], np.int32),
            "label": np.array([1.0, 0.0], np.float32)}
    state = tr.init(0, good)
    bad = dict(good, ids=np.array([[0, 1], [2, 5]], np.int32))
    with pytest.raises(ValueError, match=r"field 1 has id 5 in row 1, outside its vocabulary of 5 ids"):
        tr.train_step(state, bad)
    with pytest.raises(ValueError, match="field 1 has id 5"):
        tr.predict(state.params, Split(bad["dense"], bad["ids"], bad["label"]))
    # under "row" the same batch trains, and its id 5 reads field 1's OOV row
    row = Trainer(model.clone(embedding=EmbeddingSpec("single", dim=2, oov="row")), tr.config)
    rstate = row.init(0, good)
    logits = row.predict(rstate.params, Split(bad["dense"], bad["ids"], bad["label"]))
    other_unseen = row.predict(rstate.params, Split(bad["dense"], np.array([[0, 1], [2, 99]]), bad["label"]))
    seen = row.predict(rstate.params, Split(bad["dense"], np.array([[0, 1], [2, 4]]), bad["label"]))
    np.testing.assert_array_equal(logits, other_unseen)  # both unseen ids read field 1's one OOV row
    assert logits[0] == seen[0] and logits[1] != seen[1]
    assert rstate.params["embeddings"]["table"].shape[0] == 10 == Schema(("a", "b"), VOCAB).total_rows + 2


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64])
def test_host_check_is_exact_for_every_integer_dtype(dtype):
    info = np.iinfo(dtype)
    good = [[0, 0], [2, 4]]
    bad = [[3, 0], [0, 5], [info.max, 0], [0, info.max]] + ([[-1, 0], [0, -1], [info.min, 0]] if info.min < 0 else [])
    out = oov_lib.check_ids(np.array(good, dtype), VOCAB, None, "error")
    assert out.dtype == np.int32 and out.tolist() == good
    for row in bad:
        with pytest.raises(ValueError, match="outside its vocabulary"):
            oov_lib.check_ids(np.array([row], dtype), VOCAB, None, "error")
