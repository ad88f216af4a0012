"""Every model learns the synthetic default, and row-sparse and dense updates agree on models with a linear table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlet_jax.data.base import batches
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.models import MODELS, build_model
from mlet_jax.models.presets import paper_embedding
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer, fit

ADAGRAD = OptimizerSpec("adagrad", lr=0.02)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(0, n_train=40_000, n_valid=0, n_test=10_000)


# Narrow layers keep compilation and the epoch short; the defaults (DeepCTR-Torch's widths) run in the slow suite.
SMALL = {"dlrm": dict(bottom_mlp=(32,), top_mlp=(32,)), "xdeepfm": dict(dnn=(32, 32), cin_layer_size=(16, 16))}


def train_and_eval(model, data, config: TrainConfig, epochs: int = 1) -> float:
    trainer = Trainer(model, config)
    state, _ = fit(trainer, data.train, batch_size=256, epochs=epochs, progress=False)
    return trainer.evaluate(state.params, data.test, batch_size=10_000)["auc"]


@pytest.mark.parametrize("name", list(MODELS))
def test_one_epoch_clearly_beats_a_constant_predictor(data, name):
    # MLET k = 4d with the paper's embedding init; Adagrad lr 0.02, batch 256, one epoch over 40k rows.
    model = build_model(name, data.schema, paper_embedding(name, "mlet", 8, 32), **SMALL.get(name, dict(dnn=(32, 32))))
    auc = train_and_eval(model, data, TrainConfig(optimizer=ADAGRAD))
    assert auc >= 0.65, f"{name}: test AUC {auc:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["single", "mlet"])
@pytest.mark.parametrize("name", list(MODELS))
def test_default_architectures_learn(data, name, kind):
    model = build_model(name, data.schema, paper_embedding(name, kind, 16, 64 if kind == "mlet" else None),
                        **({"bottom_mlp": (64, 32)} if name == "dlrm" else {}))
    assert train_and_eval(model, data, TrainConfig(optimizer=ADAGRAD)) >= 0.65


def test_row_sparse_and_dense_updates_agree_with_a_linear_table(data):
    model = build_model("deepfm", data.schema, paper_embedding("deepfm", "mlet", 8, 16), dnn=(16, 8))
    bs = list(batches(data.train, 128, seed=3))[:4]
    params0 = jax.tree_util.tree_map(np.asarray, model.init(jax.random.key(0), bs[0]["dense"], bs[0]["ids"])["params"])
    out = {}
    for sparse in (True, False):
        trainer = Trainer(model, TrainConfig(optimizer=ADAGRAD, sparse_tables=sparse))
        state = trainer.init(0, bs[0], params=jax.tree_util.tree_map(jnp.asarray, params0))  # the step donates it
        for b in bs:
            state, _ = trainer.train_step(state, b)
        out[sparse] = jax.tree_util.tree_map(np.asarray, state.params)
    moved = out[False]["linear"]["embeddings"]["table"] != params0["linear"]["embeddings"]["table"]
    assert 0 < moved.sum() < moved.size  # the batches' rows of the first-order table moved, the others did not
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out[True], out[False])
