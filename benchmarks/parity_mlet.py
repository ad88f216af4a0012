"""MLET parity with the paper's authors' construction: same weights, same batch -> same logits, loss and gradients.

``../shared/peer_bench/mlet_deepctr.py``'s ``build(..., kind="mlet")`` is the authors' MLET inside DeepCTR-Torch 0.3.0
(every ``embedding_dict`` entry becomes ``Sequential(Embedding(n, k), Linear(k, d, bias=False))``; tables
U(+-1/sqrt(n)), projections N(0, 0.5); the first-order ``linear_model`` tables stay single-layer). Under DeepCTR-Torch's
python (``--torch-side``) this module builds it, runs the first ``--n`` training rows forward, and takes the gradient
of the summed BCE (DeepCTR-Torch's loss), saving weights, logits, loss and gradients to an ``.npz``. This process maps
the weights into mlet_jax's MLET model of the same kind (:func:`to_mlet_params`: the fields' ``Embedding`` weights
fused into ``embeddings/table`` ``[n_total, k]``, each ``Linear(k, d)`` weight transposed into
``embeddings/projection[f]`` ``[k, d]``; everything else as :func:`benchmarks.parity_deepctr.to_mlet_params`), and
compares logits, the loss and every parameter's gradient (max abs difference over the parameter's max abs gradient).
``tests/test_parity_mlet.py`` checks the mapping against a numpy float64 transcription of both models' forwards,
without torch.

Command (the record is ``experiments/results/parity_mlet.jsonl``; data: ``gen_data.py --n-train 20000 --n-test 2000
--max-vocab 100000 --seed 0``)::

    MLET_PEER_BENCH=../shared/peer_bench MLET_PEER_DATA=/tmp/h7_peer/criteo_like \\
        MLET_DEEPCTR_PYTHON=/work/torchvenv/bin/python .venv/bin/python -m benchmarks.parity_mlet --models DCN,DeepFM \\
        --out experiments/results/parity_mlet.jsonl

Measured (batch 1024, d 16, k 64, seed 1024): DCN logits 5.8e-7, loss 1.7e-7, gradients 1.1e-6 (relative). DeepFM
logits 3.8e-7, but DeepCTR-Torch's loss is BCE on float32 probabilities: with the authors' init the logits reach 47,
119 of 1024 rows have p(1 - p) below torch's 1e-12 clamp (their sigmoid rounds to 1 or their gradient is scaled
down), so its loss is 10524 where the logits' BCE is 5139 and its gradients differ by up to 33%. Recomputed its way
from our logits (``loss_mlet_jax_prob_bce``, ``grad_rel_max_torch_bce_weights``) they agree to 2.7e-8 and 4.7e-7.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from benchmarks.common import DEEPCTR_PYTHON_ENV, PEER_BENCH_ENV, PEER_DATA_ENV, add_external_path, require_path
from benchmarks.parity_deepctr import first_batch, grad_rel_per_leaf, mapped_weights_and_grads, run_torch_side
from benchmarks.parity_deepctr import to_mlet_params as single_params


def torch_side(args) -> None:
    """Runs under DeepCTR-Torch's python: the authors' MLET model, forward and summed-BCE gradients; saved."""
    sys.path.insert(0, args.peer_dir)
    import bench_deepctr as bd
    import mlet_deepctr
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    _, models, SparseFeat, DenseFeat = bd._import_deepctr()
    dense, sparse, label, vocab = bd.load_split(args.data, "train", args.n)
    model = mlet_deepctr.build(models, SparseFeat, DenseFeat, args.model, vocab, dense.shape[1], "mlet", d=args.dim,
                               k=args.k, seed=args.seed)
    x = bd.to_input_dict(dense, sparse)
    xs = np.concatenate([np.asarray(x[f]).reshape(len(label), -1).astype(np.float32) for f in model.feature_index],
                        axis=1)
    X, y = torch.from_numpy(xs), torch.from_numpy(label.astype(np.float32))
    seen = {}
    model.out.register_forward_hook(lambda m, inp, out: seen.__setitem__("logit", inp[0] + m.bias))
    out = {f"w/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}
    model.train()
    pred = model(X).squeeze()
    loss = F.binary_cross_entropy(pred, y, reduction="sum")
    out["logits"] = seen["logit"].detach().numpy().reshape(-1).astype(np.float64)
    out["probs"] = pred.detach().numpy().reshape(-1).copy()  # float32, as the loss saw them
    loss.backward()
    out.update({f"g/{k}": v.grad.detach().numpy().copy() for k, v in model.named_parameters() if v.grad is not None})
    out["loss"] = np.float64(loss.item())
    np.savez(args.npz, **out)


def to_mlet_params(w: dict, n_fields: int, n_layers: int, cross_layers: int) -> dict:
    """State dict of the authors' MLET model (``w/<name>`` arrays) -> mlet_jax's MLET parameter tree."""
    emb = [w[f"w/embedding_dict.C{i + 1}.0.weight"] for i in range(n_fields)]  # Embedding(n, k): [n, k]
    proj = [w[f"w/embedding_dict.C{i + 1}.1.weight"] for i in range(n_fields)]  # Linear(k, d).weight: [d, k]
    rest = dict(w) | {f"w/embedding_dict.C{i + 1}.weight": emb[i] for i in range(n_fields)}
    p = single_params(rest, n_fields, n_layers, cross_layers)
    p["embeddings"] = {"table": np.concatenate(emb), "projection": np.stack([x.T for x in proj])}
    return p


def compare(args, model_name: str) -> dict:
    import jax

    from mlet_jax.data import load_dataset
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models import build_model
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer

    w = run_torch_side(args, "benchmarks.parity_mlet", model_name, {"k": args.k})
    ds = load_dataset("arrays", args.data)
    batch = first_batch(ds, args.n)
    spec = EmbeddingSpec(kind="mlet", dim=args.dim, inner_dim=args.k, projection_std=0.5)
    net = build_model(model_name.lower(), ds.schema, spec)
    trainer = Trainer(net, TrainConfig(optimizer=OptimizerSpec("adagrad", 0.02), loss_reduction="sum"))
    params, g_torch = mapped_weights_and_grads(w, len(ds.schema.vocab_sizes), to_mlet_params, trainer, batch)
    params = jax.tree_util.tree_map(np.float32, params)
    (loss, logits), g_jax = jax.value_and_grad(lambda p: trainer.loss_and_logits(p, batch), has_aux=True)(params)
    grad_rel = grad_rel_per_leaf(g_jax, g_torch)
    lg = np.asarray(logits, np.float64)
    # DeepCTR-Torch's loss is BCE on float32 sigmoid probabilities, log clamped at -100: a row whose sigmoid rounds
    # to exactly 1 costs 100 (not its logit) and gets no gradient. Both effects, recomputed from our logits:
    p32 = (1 / (1 + np.exp(-np.asarray(logits, np.float32)))).astype(np.float32)
    y = batch["label"].astype(np.float32)
    with np.errstate(divide="ignore"):
        prob_bce = -(y * np.maximum(np.log(p32), -100) + (1 - y) * np.maximum(np.log1p(-p32), -100))
    # torch's BCE backward is (p - y) / max(p (1 - p), 1e-12), times the sigmoid's p (1 - p): each row's true
    # gradient (p - y) scaled by p(1-p) / max(p(1-p), 1e-12) in float32 (0 where p rounds to 1, < 1 below 1e-12)
    pt = w["probs"].astype(np.float32)
    pq = (pt * (np.float32(1) - pt)).astype(np.float32)
    weight = (pq / np.maximum(pq, np.float32(1e-12))).astype(np.float32)
    live = weight == 1
    g_live = jax.grad(lambda p: _weighted_loss(trainer, p, batch, weight))(params)
    grad_rel_live = max(grad_rel_per_leaf(g_live, g_torch).values())
    rec = {"model": model_name, "kind": "mlet", "n": args.n, "d": args.dim, "k": args.k,
           "logits_rel": float(np.max(np.abs(lg - w["logits"])) / np.max(np.abs(w["logits"]))),
           "max_abs_logit": float(np.max(np.abs(lg))), "saturated_rows": int((~live).sum()),
           "saturated_rows_our_sigmoid": int((~((p32 < 1) & (p32 > 0))).sum()),
           "loss_torch": float(w["loss"]), "loss_mlet_jax": float(loss),
           "loss_rel": abs(float(loss) - float(w["loss"])) / abs(float(w["loss"])),
           "loss_mlet_jax_prob_bce": float(prob_bce.sum(dtype=np.float64)),
           "loss_prob_bce_rel": abs(float(prob_bce.sum(dtype=np.float64)) - float(w["loss"])) / abs(float(w["loss"])),
           "grad_rel_max": max(grad_rel.values()), "grad_rel_max_torch_bce_weights": grad_rel_live,
           "grad_rel": grad_rel}
    print(json.dumps(rec), flush=True)
    return rec


def _weighted_loss(trainer, params, batch, weight_B):
    """The summed BCE (with logits), row b weighted by the constant ``weight_B[b]``."""
    import jax.numpy as jnp
    import optax

    logits = trainer.loss_and_logits(params, batch)[1]
    per_row = optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(batch["label"], logits.dtype))
    return jnp.sum(jnp.asarray(weight_B, per_row.dtype) * per_row)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="DCN,DeepFM")
    ap.add_argument("--model", default="DCN", help="(--torch-side) the one model")
    add_external_path(ap, "--data", PEER_DATA_ENV, "PREFIX of the peer bench's PREFIX_{train,test}.npz")
    ap.add_argument("--n", type=int, default=1024, help="rows of the one batch")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    add_external_path(ap, "--deepctr-python", DEEPCTR_PYTHON_ENV, "python of a venv with DeepCTR-Torch 0.3.0")
    add_external_path(ap, "--peer-dir", PEER_BENCH_ENV, "the peer bench folder (mlet_deepctr.py)")
    ap.add_argument("--out", default=None, help="also write the records as JSON lines here")
    ap.add_argument("--torch-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--npz", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.k < args.dim:
        ap.error(f"argument --k: {args.k} < --dim {args.dim} (the paper's MLET has k >= d)")
    require_path(ap, args.data, "--data", PEER_DATA_ENV, files=("_train.npz",))
    require_path(ap, args.peer_dir, "--peer-dir", PEER_BENCH_ENV, files=("/mlet_deepctr.py",))
    if args.torch_side:
        torch_side(args)
        return []
    require_path(ap, args.deepctr_python, "--deepctr-python", DEEPCTR_PYTHON_ENV)
    if args.out:
        from mlet_jax.io import check_output_file

        check_output_file(args.out)
    recs = [compare(args, m.strip()) for m in args.models.split(",") if m.strip()]
    if args.out:
        from mlet_jax.io import atomic_write_text

        atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in recs))
    return recs


if __name__ == "__main__":
    main()
