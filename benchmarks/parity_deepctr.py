"""Do mlet_jax's DeepCTR models compute DeepCTR-Torch's function? Same weights, same batch: logits, loss, one step.

DeepCTR-Torch 0.3.0 builds the model (``../shared/peer_bench/bench_deepctr.py``'s feature columns, the regularizers
off as in ``bench_vs_deepctr.py``), runs the first ``--n`` training rows forward, takes one torch Adagrad step on the
summed BCE, and runs them forward again; in its own venv and process (``--torch-side``: this module under
DeepCTR-Torch's python, from the repository root), writing its weights and logits to an ``.npz``. The peer bench
folder, its data and that python are ``--peer-dir``, ``--data`` and ``--deepctr-python``, or ``$MLET_PEER_BENCH``,
``$MLET_PEER_DATA`` and ``$MLET_DEEPCTR_PYTHON``. This process copies those weights into mlet_jax's model (fused
tables, transposed kernels), and compares logits before the step, the loss, one mlet_jax Adagrad step (row-sparse)
and the logits after it.

It also compares every parameter's gradient (max abs difference over the parameter's max abs gradient). Logits,
loss and gradients equal to float32 rounding mean the two train the same function. The logits after one Adagrad
step are a weak check: torch Adagrad's first step is ``lr g / (|g| + 1e-10)``, about ``+-lr`` for any nonzero
gradient, so gradient entries that are rounding noise around zero (ReLU ties, cancelling sums) become full-size
steps of either sign.

Command (BENCHMARKS.md)::

    MLET_PEER_BENCH=../shared/peer_bench MLET_PEER_DATA=/tmp/peer_bench/data/criteo_like \\
        MLET_DEEPCTR_PYTHON=/tmp/venv-torch/bin/python .venv/bin/python -m benchmarks.parity_deepctr --models DCN,DeepFM
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks.common import DEEPCTR_PYTHON_ENV, PEER_BENCH_ENV, PEER_DATA_ENV, REPO, add_external_path, require_path

NO_L2 = {"DCN": {"l2_reg_embedding": 0.0, "l2_reg_linear": 0.0, "l2_reg_cross": 0.0},
         "DeepFM": {"l2_reg_embedding": 0.0, "l2_reg_linear": 0.0},
         "WDL": {"l2_reg_embedding": 0.0, "l2_reg_linear": 0.0},
         "NFM": {"l2_reg_embedding": 0.0, "l2_reg_linear": 0.0}}


def torch_side(args) -> None:
    """Runs under DeepCTR-Torch's python: build, forward, one Adagrad step, forward; save everything."""
    sys.path.insert(0, args.peer_dir)
    import bench_deepctr as bd
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    _, models, SparseFeat, DenseFeat = bd._import_deepctr()
    dense, sparse, label, vocab = bd.load_split(args.data, "train", args.n)
    cols = [SparseFeat(f"C{i + 1}", vocabulary_size=int(vocab[i]), embedding_dim=args.dim)
            for i in range(sparse.shape[1])] + [DenseFeat(f"I{i + 1}", 1) for i in range(dense.shape[1])]
    model = getattr(models, args.model)(cols, cols, task="binary", device="cpu", seed=args.seed,
                                        **NO_L2.get(args.model, {}))
    x = bd.to_input_dict(dense, sparse)
    xs = np.concatenate([np.asarray(x[f]).reshape(len(label), -1).astype(np.float32) for f in model.feature_index],
                        axis=1)
    X, y = torch.from_numpy(xs), torch.from_numpy(label.astype(np.float32))
    seen = {}
    model.out.register_forward_hook(lambda m, inp, out: seen.__setitem__("logit", inp[0] + m.bias))

    def logits():
        model(X)
        return seen["logit"].detach().numpy().reshape(-1).astype(np.float64)

    out = {f"w/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}
    model.train()
    out["logits_before"] = logits()
    opt = torch.optim.Adagrad(model.parameters(), lr=args.lr)
    opt.zero_grad()
    loss = F.binary_cross_entropy(model(X).squeeze(), y, reduction="sum")
    loss.backward()
    out.update({f"g/{k}": v.grad.detach().numpy().copy() for k, v in model.named_parameters() if v.grad is not None})
    opt.step()
    out["loss"] = np.float64(loss.item())
    out["logits_after"] = logits()
    np.savez(args.npz, **out)


def to_mlet_params(w: dict, n_fields: int, n_layers: int, cross_layers: int) -> dict:
    """DeepCTR-Torch state dict (``w/<name>`` arrays) -> mlet_jax parameter tree of the same model."""
    cat = np.concatenate
    p = {"embeddings": {"table": cat([w[f"w/embedding_dict.C{i + 1}.weight"] for i in range(n_fields)])},
         "linear": {"embeddings": {"table": cat([w[f"w/linear_model.embedding_dict.C{i + 1}.weight"]
                                                for i in range(n_fields)])},
                    "dense": w["w/linear_model.weight"][:, 0]},
         "bias": w["w/out.bias"].reshape(1)}
    if n_layers:
        p["dnn"] = {f"Dense_{j}": {"kernel": w[f"w/dnn.linears.{j}.weight"].T, "bias": w[f"w/dnn.linears.{j}.bias"]}
                    for j in range(n_layers)}
    if "w/dnn_linear.weight" in w:
        p["dnn_linear"] = {"kernel": w["w/dnn_linear.weight"].T}
    if cross_layers:
        p["crossnet"] = {}
        for i in range(cross_layers):
            p["crossnet"][f"kernel_{i}"] = w["w/crossnet.kernels"][i, :, 0]
            p["crossnet"][f"bias_{i}"] = w["w/crossnet.bias"][i, :, 0]
    return p


def run_torch_side(args, module: str, model_name: str, options: dict) -> dict:
    """``python -m MODULE --torch-side`` under DeepCTR-Torch's interpreter (``args.deepctr_python``), on the first
    ``args.n`` rows of ``args.data``: the weights (``w/<name>``), gradients (``g/<name>``) and outputs it saved."""
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "torch.npz")
        opts = {"n": args.n, "dim": args.dim, **options, "seed": args.seed, "threads": args.threads}
        cmd = [args.deepctr_python, "-m", module, "--torch-side", "--model", model_name, "--npz", npz,
               "--data", args.data, *(x for k, v in opts.items() for x in (f"--{k}", str(v))),
               "--peer-dir", args.peer_dir]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
        if res.returncode != 0:
            raise RuntimeError(f"torch side failed ({res.returncode}):\n{res.stderr[-3000:]}")
        return dict(np.load(npz))


def first_batch(ds, n: int) -> dict:
    """The first ``n`` training rows, the batch both sides compute on."""
    return {k: np.asarray(getattr(ds.train, k)[:n]) for k in ("dense", "ids", "label")}


def mapped_weights_and_grads(w: dict, n_fields: int, to_params, trainer, batch) -> tuple[dict, dict]:
    """The torch side's weights and gradients as mlet_jax parameter trees (``to_params(tree, n_fields, n_layers,
    cross_layers)``; a gradient torch did not produce is zero); the weights' shapes must be ``trainer``'s."""
    import jax  # see compare()

    n_layers = len([k for k in w if k.startswith("w/dnn.linears.") and k.endswith(".weight")])
    cross = w["w/crossnet.kernels"].shape[0] if "w/crossnet.kernels" in w else 0
    params = to_params(w, n_fields, n_layers, cross)
    ref = jax.tree_util.tree_map(lambda x: x.shape, trainer.init_params(0, batch))
    got = jax.tree_util.tree_map(lambda x: x.shape, params)
    if ref != got:
        raise ValueError(f"parameter trees differ:\n mlet_jax {ref}\n mapped   {got}")
    # gradients of the summed loss, mapped the same way as the weights (torch's "g/<name>" -> "w/<name>")
    grads = to_params({"w/" + k[2:]: v for k, v in w.items() if k.startswith("g/")} | {
        k: np.zeros_like(v) for k, v in w.items() if k.startswith("w/") and "g/" + k[2:] not in w},
        n_fields, n_layers, cross)
    return params, grads


def grad_rel_per_leaf(g_jax, g_torch) -> dict[str, float]:
    """Per parameter: ``max |ours - torch's| / max |torch's|``."""
    import jax  # see compare()

    return {jax.tree_util.keystr(path): float(np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 1e-30))
            for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_jax), jax.tree_util.tree_leaves(g_torch),
                                    strict=True)}


def compare(args, model_name: str) -> dict:
    # jax and mlet_jax are imported here, not at the top: the --torch-side half of this script runs under
    # DeepCTR-Torch's interpreter, which has neither.
    import jax

    from mlet_jax.data import load_dataset
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models import build_model
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer

    w = run_torch_side(args, "benchmarks.parity_deepctr", model_name, {"lr": args.lr})
    ds = load_dataset("arrays", args.data)
    batch = first_batch(ds, args.n)
    spec = EmbeddingSpec(kind="single", dim=args.dim, table_init="normal", table_std=1e-4)
    net = build_model(model_name.lower(), ds.schema, spec)
    trainer = Trainer(net, TrainConfig(optimizer=OptimizerSpec("adagrad", args.lr), loss_reduction="sum"))
    params, g_torch = mapped_weights_and_grads(w, len(ds.schema.vocab_sizes), to_mlet_params, trainer, batch)
    state = trainer.init(0, batch, params=jax.tree_util.tree_map(np.float32, params))
    before = np.asarray(trainer.eval_step(state.params, batch), np.float64)
    grad_rel = grad_rel_per_leaf(jax.grad(lambda p: trainer.loss_and_logits(p, batch)[0])(state.params), g_torch)
    state, m = trainer.train_step(state, batch)
    after = np.asarray(trainer.eval_step(state.params, batch), np.float64)

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    rec = {"model": model_name, "n": args.n, "logits_before_rel": rel(before, w["logits_before"]),
           "loss_torch": float(w["loss"]), "loss_mlet_jax": float(m["loss"]),
           "loss_rel": abs(float(m["loss"]) - float(w["loss"])) / abs(float(w["loss"])),
           "logits_after_rel": rel(after, w["logits_after"]),
           "step_change_rel": rel(w["logits_after"], w["logits_before"]),
           "grad_rel_max": max(grad_rel.values()), "grad_rel": grad_rel}
    print(json.dumps(rec), flush=True)
    return rec


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="DCN,DeepFM")
    ap.add_argument("--model", default="DCN", help="(--torch-side) the one model")
    add_external_path(ap, "--data", PEER_DATA_ENV, "PREFIX of the peer bench's PREFIX_{train,test}.npz")
    ap.add_argument("--n", type=int, default=1024, help="rows of the one batch")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    add_external_path(ap, "--deepctr-python", DEEPCTR_PYTHON_ENV, "python of a venv with DeepCTR-Torch 0.3.0")
    add_external_path(ap, "--peer-dir", PEER_BENCH_ENV, "the peer bench folder (bench_deepctr.py)")
    ap.add_argument("--torch-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--npz", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    require_path(ap, args.data, "--data", PEER_DATA_ENV, files=("_train.npz",))
    require_path(ap, args.peer_dir, "--peer-dir", PEER_BENCH_ENV, files=("/bench_deepctr.py",))
    if not args.torch_side:
        require_path(ap, args.deepctr_python, "--deepctr-python", DEEPCTR_PYTHON_ENV)
    if args.torch_side:
        torch_side(args)
        return []
    return [compare(args, m.strip()) for m in args.models.split(",") if m.strip()]


if __name__ == "__main__":
    main()
