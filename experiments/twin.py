"""MLET against its isotropic twin: does the non-homogeneous weighting of MLET's step matter, or only its size?

    python -m experiments.twin --quick --out experiments/results/quick
    python -m experiments.twin --from-tuned experiments/results/quick/tuned.json --out experiments/results/quick

One SGD step of a factorized field table ``W_f = T_f P_f`` (rows ``T_f``: ``n_f x k``, projection ``P_f``:
``k x d``; table learning rate ``a``, projection learning rate ``b``) moves ``W_f`` by, to first order,
``-(a G P_f^T P_f + b T_f T_f^T G)``: in the SVD bases of the two factors, direction ``u_j v_i^T`` of the single-layer
step ``-G`` is re-weighted by ``a sigma_P(i)^2 + b sigma_T(j)^2`` (Deng et al., Eq. 13; ``sigma_T(j) = 0`` for
``j > k``). Its mean over the ``d x n_f`` directions is

``e_f = a ||P_f||_F^2 / d + b ||T_f||_F^2 / n_f``

(:func:`mean_enhancement`; no SVD needed). The *twin* is a single-layer model trained on the same batches, whose
field-``f`` rows take the SGD step ``-e_f(t) G`` with ``e_f(t)`` read from the paired MLET run's state at that very
step: the same average update size as MLET, step by step, but isotropic. A *constant twin* uses ``e_f(0)`` throughout
(the ``k std^2`` control of experiments/controls.py, per field), and *single* uses MLET's own table lr ``a``.
MLET - twin isolates the anisotropy; twin - constant twin isolates the growth of the factors during training.

All four models train in one loop, per seed, on the same batches (the seed orders them and initializes each
model); the comparison is paired by seed. tests/test_twin.py checks on a fixed batch, against numpy float64 SVDs,
that the twin's update has MLET's mean enhancement (and MLET's is anisotropic).

Adagrad. Its factors are not ``sigma^2``-shaped (``theory.measured_enhancement``: each coordinate moves by ~lr), so
the Adagrad twin uses the measured effective factor instead: at every step, ``rho_f(t) = ||dW_f(MLET)||_F /
||own step of field f||``, the ratio of MLET's actual change of the collapsed field table to the twin's own torch
Adagrad step (:func:`twin_adagrad_step`; the ``step_ratio`` of ``theory.measured_enhancement``, measured on the
running states); the twin then takes ``rho_f(t)`` times its own step, so each field's table moves by exactly as much
as MLET's, in Adagrad's per-coordinate directions. The constant twin keeps ``rho_f(0)``.

Expected runtime: quick (DLRM, d 4, k 64, 40k rows, 5 seeds): ~2-4 minutes on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from experiments.common import key_value, pyplot, save_figure
from experiments.tuned import paired, previous, verdict
from mlet_jax.data.base import batches
from mlet_jax.data.registry import load_dataset
from mlet_jax.embeddings import collapse_table
from mlet_jax.io import atomic_write_text
from mlet_jax.models import build_model
from mlet_jax.models.presets import paper_optimizer
from mlet_jax.spectra import spectra_record
from mlet_jax.train import RunConfig
from mlet_jax.training import Trainer

ARMS = ("mlet", "twin", "twin_const", "single")


# -- the theory pieces ----------------------------------------------------------------------------------------------


def field_ids(vocab_sizes, n_rows: int) -> np.ndarray:
    """``[n_rows]`` int32: each fused-table row's field; padding rows get ``len(vocab_sizes)``."""
    sizes = np.asarray(vocab_sizes, np.int64)
    if n_rows < sizes.sum():
        raise ValueError(f"n_rows {n_rows} is fewer than the {int(sizes.sum())} rows of vocab_sizes")
    out = np.full(n_rows, len(sizes), np.int32)
    out[: sizes.sum()] = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    return out


def mean_enhancement(emb: dict, vocab_sizes, table_lr, projection_lr) -> jax.Array:
    """``[F]``: per field, ``a ||P_f||^2 / d + b ||T_f||^2 / n_f`` (the mean over the ``d x n_f`` directions of
    ``a sigma_P(i)^2 + b sigma_T(j)^2``; ``a`` = table lr, ``b`` = projection lr). ``emb``: the MLET
    ``embeddings`` parameters (``table [N, k]``, ``projection [F, k, d]``). Traceable."""
    table, proj = emb["table"], emb["projection"]
    if proj.ndim != 3 or proj.shape[0] != len(vocab_sizes):
        raise ValueError(f"projection must be [F={len(vocab_sizes)}, k, d], got {tuple(proj.shape)}")
    f = len(vocab_sizes)
    fid = jnp.asarray(field_ids(vocab_sizes, table.shape[0]))
    t2 = jax.ops.segment_sum(jnp.sum(table * table, axis=1), fid, num_segments=f + 1)[:f]
    p2 = jnp.sum(proj * proj, axis=(1, 2))
    n = jnp.asarray(np.asarray(vocab_sizes, np.float64), table.dtype)
    return table_lr * p2 / proj.shape[2] + projection_lr * t2 / n


@functools.partial(jax.jit, static_argnums=(0, 1))
def _enhancement(vocab_sizes, lrs, params):
    return mean_enhancement(params["embeddings"], vocab_sizes, *lrs)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def twin_step(trainer, fid_key, params, batch, lr, field_lr_F, other_table_lr):
    """One SGD step of a single-layer model whose embedding-table rows of field ``f`` use learning rate
    ``field_lr_F[f]`` (the other tables ``other_table_lr``, everything else ``lr``); ``fid_key``: the tuple of
    vocabulary sizes. Equal to :class:`mlet_jax.training.Trainer`'s SGD step when every rate is the same."""
    (loss, _), g = jax.value_and_grad(trainer.loss_and_logits, has_aux=True)(params, batch)
    flat, gflat = traverse_util.flatten_dict(params), traverse_util.flatten_dict(g)
    tables = set(trainer.table_paths)
    out = {}
    for p, v in flat.items():
        if p == ("embeddings", "table"):
            fid = jnp.asarray(field_ids(fid_key, v.shape[0]))
            rows = jnp.concatenate([field_lr_F.astype(v.dtype), jnp.zeros((1,), v.dtype)])[fid]
            out[p] = v - rows[:, None] * gflat[p]
        else:
            out[p] = v - (other_table_lr if p in tables else lr) * gflat[p]
    return traverse_util.unflatten_dict(out), loss


@functools.partial(jax.jit, static_argnums=(0,))
def _field_change(vocab_sizes, before, after):
    """``[F]``: ``||W_f(after) - W_f(before)||_F`` of the collapsed MLET tables (every row of every field)."""
    e0, e1 = before["embeddings"], after["embeddings"]
    dw = collapse_table(e1["table"], e1["projection"], vocab_sizes) - collapse_table(e0["table"], e0["projection"],
                                                                                        vocab_sizes)
    f = len(vocab_sizes)
    fid = jnp.asarray(field_ids(vocab_sizes, dw.shape[0]))
    return jnp.sqrt(jax.ops.segment_sum(jnp.sum(dw * dw, axis=1), fid, num_segments=f + 1)[:f])


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def twin_adagrad_step(trainer, fid_key, params, acc, batch, lr, table_lr, target_F, factor_F):
    """One torch-Adagrad step of a single-layer model (accumulators ``acc``, from zeros; eps 1e-10 outside the
    root) in which field ``f``'s embedding rows take ``rho_f`` times their own step, ``rho_f = target_F[f] /
    ||own step of field f||`` (where ``target_F < 0``: ``rho_f = factor_F[f]``; 1 is the plain step). Returns
    ``(params, acc, rho_F, loss)``.
    With ``target_F`` = MLET's measured ``||dW_f||`` at that step the twin moves each field's table by exactly as
    much as MLET does, in its own (per-coordinate Adagrad) directions."""
    (loss, _), g = jax.value_and_grad(trainer.loss_and_logits, has_aux=True)(params, batch)
    flat, gflat, aflat = (traverse_util.flatten_dict(t) for t in (params, g, acc))
    tables = set(trainer.table_paths)
    out, new_acc, rho = {}, {}, jnp.ones((len(fid_key),), jnp.float32)
    for p, v in flat.items():
        a = aflat[p] + gflat[p] * gflat[p]
        new_acc[p] = a
        step = gflat[p] / (jnp.sqrt(a) + 1e-10)
        if p == ("embeddings", "table"):
            fid = jnp.asarray(field_ids(fid_key, v.shape[0]))
            own = jnp.sqrt(jax.ops.segment_sum(jnp.sum((table_lr * step) ** 2, axis=1), fid,
                                               num_segments=len(fid_key) + 1)[: len(fid_key)])
            rho = jnp.where(target_F < 0, factor_F, target_F / jnp.maximum(own, 1e-30)).astype(v.dtype)
            rows = jnp.concatenate([rho, jnp.zeros((1,), v.dtype)])[fid]
            out[p] = v - (table_lr * rows)[:, None] * step
        else:
            out[p] = v - (table_lr if p in tables else lr) * step
    return traverse_util.unflatten_dict(out), traverse_util.unflatten_dict(new_acc), rho, loss


# -- the experiment -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TwinPlan:
    model: str = "dlrm"
    d: int = 4
    k: int = 64
    lr: float = 0.2
    table_lr_mult: float = 1.0
    projection_std: float = 0.25
    seeds: int = 5
    dataset: str = "synthetic"
    data_dir: str | None = None
    data_options: tuple[tuple[str, object], ...] = (("n_test", 20_000), ("n_train", 40_000), ("n_valid", 10_000))
    model_options: tuple[tuple[str, object], ...] = (("bottom_mlp", (64, 32)), ("top_mlp", (64, 32)))
    batch_size: int = 256
    epochs: int = 1
    record_every: int = 10
    spectra_every: int = 50
    source: str = "paper default"

    def __post_init__(self):
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2, got {self.seeds}")
        if self.k < self.d:
            raise ValueError(f"k must be >= d, got k={self.k}, d={self.d}")
        for name in ("lr", "table_lr_mult"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and > 0, got {v}")

    @property
    def optimizer(self) -> str:
        return paper_optimizer(self.model).name

    def run_config(self, embedding: str, seed: int):
        return RunConfig(model=self.model, embedding=embedding, d=self.d, k=self.k if embedding == "mlet" else None,
                         lr=self.lr, table_lr_mult=self.table_lr_mult,
                         projection_std=self.projection_std, batch_size=self.batch_size, epochs=self.epochs,
                         seed=seed, model_options=self.model_options)


def train_seed(plan: TwinPlan, ds, seed: int, *, spectra: bool = False) -> dict:
    """MLET, twin, constant twin and single trained on the same batches; test metrics and the factor's trace."""
    vocab = tuple(int(v) for v in ds.schema.vocab_sizes)
    mcfg, scfg = plan.run_config("mlet", seed), plan.run_config("single", seed)
    mtr = Trainer(build_model(plan.model, ds.schema, mcfg.embedding_spec, **dict(plan.model_options)),
                  mcfg.train_config)
    str_ = Trainer(build_model(plan.model, ds.schema, scfg.embedding_spec, **dict(plan.model_options)),
                   scfg.train_config)
    first = mtr.place_batch(next(batches(ds.train, plan.batch_size, seed=seed)))
    state = mtr.init(seed, first)
    init = str_.init(seed, first).params
    copy = functools.partial(jax.tree_util.tree_map, jnp.array)
    params = {"twin": copy(init), "twin_const": copy(init), "single": copy(init)}
    a = plan.lr * plan.table_lr_mult
    lrs = (a, plan.lr)
    e0 = _enhancement(vocab, lrs, state.params)
    const_F, single_F = e0, jnp.full_like(e0, a)
    trace, spec = [], {arm: [] for arm in ARMS}
    adagrad = plan.optimizer == "adagrad"
    if adagrad:  # the measured factor: MLET's ||dW_f|| over the twin's own step, per field and step
        acc = {arm: jax.tree_util.tree_map(jnp.zeros_like, init) for arm in ARMS[1:]}
        const_F, no_target, ones = None, -jnp.ones_like(e0), jnp.ones_like(e0)
    step = 0
    for epoch in range(plan.epochs):
        for b in batches(ds.train, plan.batch_size, seed=seed, epoch=epoch):
            batch = mtr.place_batch(b)
            if spectra and step % plan.spectra_every == 0:
                spec["mlet"].append(spectra_record(state.params, vocab, step))
                for arm in ARMS[1:]:
                    spec[arm].append(spectra_record(params[arm], vocab, step))
            if not adagrad:
                e = _enhancement(vocab, lrs, state.params)  # MLET's factor at this step, before its update
                if step % plan.record_every == 0:
                    trace.append((step, e))
                state, _ = mtr.train_step(state, batch)
                params["twin"], _ = twin_step(str_, vocab, params["twin"], batch, plan.lr, e, a)
                params["twin_const"], _ = twin_step(str_, vocab, params["twin_const"], batch, plan.lr, const_F, a)
                params["single"], _ = twin_step(str_, vocab, params["single"], batch, plan.lr, single_F, a)
            else:
                before = jax.tree_util.tree_map(jnp.array, {"embeddings": state.params["embeddings"]})
                state, _ = mtr.train_step(state, batch)
                target = _field_change(vocab, before, {"embeddings": state.params["embeddings"]})
                params["twin"], acc["twin"], rho, _ = twin_adagrad_step(
                    str_, vocab, params["twin"], acc["twin"], batch, plan.lr, a, target, ones)
                if const_F is None:  # the first step's factor, kept for the constant twin
                    const_F = rho
                params["twin_const"], acc["twin_const"], _, _ = twin_adagrad_step(
                    str_, vocab, params["twin_const"], acc["twin_const"], batch, plan.lr, a, no_target, const_F)
                params["single"], acc["single"], _, _ = twin_adagrad_step(
                    str_, vocab, params["single"], acc["single"], batch, plan.lr, a, no_target, ones)
                if step % plan.record_every == 0:
                    trace.append((step, rho * a))
            step += 1
    if spectra:
        spec["mlet"].append(spectra_record(state.params, vocab, step))
        for arm in ARMS[1:]:
            spec[arm].append(spectra_record(params[arm], vocab, step))
    out = {"seed": seed, "steps": step, "test": {}, "valid": {}}
    for arm in ARMS:
        tr, p = (mtr, state.params) if arm == "mlet" else (str_, params[arm])
        out["test"][arm] = tr.evaluate(p, ds.test)
        if ds.valid is not None and len(ds.valid):
            out["valid"][arm] = tr.evaluate(p, ds.valid)
    out["factor_trace"] = {"steps": [s for s, _ in trace],
                           "effective_table_lr": [np.asarray(x, np.float64).tolist() for _, x in trace],
                           "table_lr": a}
    if spectra:
        out["spectra"] = {arm: [{"step": r["step"], "mean_effective_rank": r["mean_effective_rank"],
                                 "mean_information_abundance": r["mean_information_abundance"],
                                 "rows": [f["rows"] for f in r["fields"]],
                                 "singular_values": [f["singular_values"] for f in r["fields"]]} for r in v]
                          for arm, v in spec.items()}
    return out


def analyze(per_seed: list[dict]) -> list[dict]:
    def get(arm, m):
        return {r["seed"]: r["test"][arm][m] for r in per_seed if math.isfinite(r["test"][arm][m])}

    out = []
    for a, b in (("mlet", "twin"), ("mlet", "twin_const"), ("twin", "twin_const"), ("mlet", "single"),
                 ("twin", "single")):
        p = paired(get(a, "auc"), get(b, "auc"))
        out.append({"a": a, "b": b, "auc_diff": p, "logloss_diff": paired(get(a, "logloss"), get(b, "logloss")),
                    "verdict": verdict(p, a, b)})
    return out


def markdown(res: dict) -> str:
    plan, seeds = res["plan"], res["seeds"]
    tr = seeds[0]["factor_trace"]
    e = np.asarray(tr["effective_table_lr"]) / tr["table_lr"]  # [records, F]
    opt = "adagrad" if plan["model"] != "dlrm" else "sgd"
    what = ("MLET's measured factor rho_f = ||dW_f(MLET)|| / ||twin's own Adagrad step||" if opt == "adagrad"
            else "MLET's mean enhancement e_f / a")
    lines = [f"Model `{plan['model']}` ({opt}), d = {plan['d']}, k = {plan['k']}; MLET settings ({plan['source']}): "
             f"lr {plan['lr']:.3g}, table-lr mult {plan['table_lr_mult']:.3g}, projection std "
             f"{plan['projection_std']:.3g}; {len(seeds)} seeds, {seeds[0]['steps']} steps each, data "
             f"`{plan['dataset']}` {dict(plan['data_options'])}.", "",
             f"{what} (seed 0, mean over fields): {e[0].mean():.3g} at step 0, "
             f"{e[len(e) // 2].mean():.3g} at step {tr['steps'][len(e) // 2]}, {e[-1].mean():.3g} at step "
             f"{tr['steps'][-1]}; per field at the last record: " + ", ".join(f"{x:.3g}" for x in e[-1]) + ".", "",
             "| arm | test AUC (mean +- std) | test LogLoss |", "|---|---|---|"]
    for arm in ARMS:
        a = np.array([r["test"][arm]["auc"] for r in seeds])
        ll = np.array([r["test"][arm]["logloss"] for r in seeds])
        lines.append(f"| {arm} | {a.mean():.4f} +- {a.std(ddof=1):.4f} | {ll.mean():.4f} +- {ll.std(ddof=1):.4f} |")
    lines += ["", "| comparison | test AUC difference (paired, mean +- SE) | test LogLoss difference | verdict |",
              "|---|---|---|---|"]
    for c in res["comparisons"]:
        p, q = c["auc_diff"], c["logloss_diff"]
        lines.append(f"| {c['a']} - {c['b']} | {p['mean']:+.4f} +- {p['se']:.4f} (n={p['n']}) | "
                     f"{q['mean']:+.4f} +- {q['se']:.4f} | **{c['verdict']}** |")
    lines += ["", "twin: single-layer, field-f rows stepped with MLET's factor at that step (SGD: the mean enhancement "
              "e_f(t); Adagrad: the measured rho_f(t), so that ||dW_f|| equals MLET's); "
              "twin_const: e_f(0) throughout; single: MLET's table lr a.", "",
              f"Command: `{res['command']}`; wall time {res['seconds']:.0f} s (load average {res['load_avg']:.1f} "
              f"on {os.cpu_count()} CPUs)."]
    return "\n".join(lines)


def figures(res: dict, out: str, prefix: str) -> list[str]:
    plt = pyplot()
    paths = []
    s0 = res["seeds"][0]
    tr = s0["factor_trace"]
    e = np.asarray(tr["effective_table_lr"]) / tr["table_lr"]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4))
    for f in range(e.shape[1]):
        a0.plot(tr["steps"], e[:, f], label=f"field {f}")
    a0.set_yscale("log")
    a0.set_xlabel("step")
    a0.set_ylabel("mean enhancement e_f / table lr")
    a0.set_title("MLET's mean enhancement per field (seed 0)")
    a0.legend(fontsize=7, ncol=2)
    a0.grid(alpha=0.3)
    for j, arm in enumerate(ARMS):
        v = [r["test"][arm]["auc"] for r in res["seeds"]]
        a1.plot([j] * len(v), v, "o", alpha=0.6)
    for r in res["seeds"]:
        a1.plot(range(len(ARMS)), [r["test"][a]["auc"] for a in ARMS], color="gray", alpha=0.3, lw=0.8)
    a1.set_xticks(range(len(ARMS)), ARMS)
    a1.set_ylabel("test AUC")
    a1.set_title("paired by seed")
    a1.grid(alpha=0.3)
    fig.suptitle("MLET vs its isotropic twin")
    p = os.path.join(out, f"fig_{prefix}.png")
    save_figure(fig, p)
    paths.append(p)
    if "spectra" in s0:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for arm in ARMS:
            recs = s0["spectra"][arm]
            steps = [r["step"] for r in recs]
            axes[0].plot(steps, [r["mean_effective_rank"] for r in recs], marker="o", label=arm)
            axes[1].plot(steps, [r["mean_information_abundance"] for r in recs], marker="o", label=arm)
            sv = np.asarray(recs[-1]["singular_values"][int(np.argmax(recs[-1]["rows"]))])
            axes[2].semilogy(np.arange(1, len(sv) + 1), sv / sv.max(), marker="o", label=arm)
        axes[0].set_ylabel("mean effective rank")
        axes[1].set_ylabel("mean information abundance")
        axes[2].set_ylabel("singular values / largest (largest field, end)")
        axes[2].set_xlabel("index")
        for ax in axes[:2]:
            ax.set_xlabel("step")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("embedding spectra during training (seed 0)")
        p = os.path.join(out, f"fig_{prefix}_spectra.png")
        save_figure(fig, p)
        paths.append(p)
    return paths


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> dict | None:
    """The step of ``python -m experiments.reproduce``: the twin of ``OUT/tuned.json``'s largest-k MLET winner
    (skipped without one). SGD models only; not sharded."""
    if shard != (0, 1):
        log("twin: not sharded; run it once without --shard")
        return None
    tuned = os.path.join(out, "tuned.json")
    if not os.path.exists(tuned):
        log("twin: no tuned.json (the tuned step ran for the quick plan or real data only); skipped")
        return None
    tp = plan_from_tuned(tuned, TwinPlan())

    if previous(os.path.join(out, "twin.json"), dataclasses.asdict(tp), "twin.py") is None and not train:
        log("twin: no result for this plan and --analyze-only; skipped")
        return None
    return run_twin(tp, out, log=log, command=f"python -m experiments.reproduce ... --out {out} (step twin)")


def run_twin(plan: TwinPlan, out: str, *, log=print, prefix: str = "twin", command: str = "") -> dict:
    """Every seed's four arms, the paired comparisons; writes ``{prefix}.json``, ``{prefix}.md`` and the figures.
    A result of the same plan already there is re-rendered, not retrained."""

    p = os.path.join(out, f"{prefix}.json")
    old = previous(p, dataclasses.asdict(plan), "twin.py")
    if old is not None:
        log(f"twin: reusing {prefix}.json (same plan)")
        atomic_write_text(os.path.join(out, f"{prefix}.md"), markdown(old) + "\n")
        figures(old, out, prefix)
        return old
    t0 = time.perf_counter()
    ds = load_dataset(plan.dataset, plan.data_dir, **dict(plan.data_options))
    seeds = []
    for s in range(plan.seeds):
        t1 = time.perf_counter()
        seeds.append(train_seed(plan, ds, s, spectra=(s == 0)))
        log(f"twin seed {s}: " + ", ".join(f"{a} {seeds[-1]['test'][a]['auc']:.4f}" for a in ARMS)
            + f" ({time.perf_counter() - t1:.0f} s)")
    res = {"plan": dataclasses.asdict(plan), "seeds": seeds, "comparisons": analyze(seeds),
           "seconds": round(time.perf_counter() - t0, 1), "load_avg": os.getloadavg()[0],
           "command": command or f"python -m experiments.twin --out {out}"}
    os.makedirs(out, exist_ok=True)
    atomic_write_text(p, json.dumps(res, default=float))
    atomic_write_text(os.path.join(out, f"{prefix}.md"), markdown(res) + "\n")
    figures(res, out, prefix)
    return res


def plan_from_tuned(path: str, base: TwinPlan) -> TwinPlan:
    """The MLET winner with the largest k of a tuned.py result (its data and model too)."""
    res = json.load(open(path))
    p = res["plan"]
    ks = [v["k"] for v in res["final"].values() if v["k"] is not None]
    if not ks:
        raise ValueError(f"{path}: no MLET arm")
    k = max(ks)
    s = res["final"][f"mlet_k{k}"]["settings"]
    return dataclasses.replace(base, model=p["model"], d=p["d"], k=k, lr=s["lr"], table_lr_mult=s["table_lr_mult"],
                               projection_std=s["projection_std"], dataset=p["dataset"], data_dir=p["data_dir"],
                               data_options=tuple((a, tuple(b) if isinstance(b, list) else b)
                                                  for a, b in p["data_options"]),
                               model_options=tuple((a, tuple(b) if isinstance(b, list) else b)
                                                   for a, b in p["model_options"]),
                               batch_size=p["batch_size"], epochs=p["epochs"],
                               source=f"tuned winner of {os.path.basename(path)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="the quick synthetic plan (the defaults)")
    p.add_argument("--from-tuned", default=None, metavar="TUNED_JSON",
                   help="take model, data and the largest-k MLET winner's settings from a tuned.py result")
    p.add_argument("--model", default="dlrm")
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--table-lr-mult", type=float, default=1.0)
    p.add_argument("--projection-std", type=float, default=0.25)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--data-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option (JSON values), e.g. valid_fraction=0.1; replaces the quick sizes")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--prefix", default="twin")
    a = p.parse_args(argv)
    if a.from_tuned and not os.path.isfile(a.from_tuned):
        p.error(f"argument --from-tuned: {a.from_tuned!r} is not a file")
    if a.dataset != "synthetic" and not (a.data_dir and os.path.isdir(a.data_dir)):
        p.error(f"argument --data-dir: --dataset {a.dataset} needs an existing cache folder")
    try:
        base = TwinPlan(model=a.model, d=a.d, k=a.k, lr=a.lr, table_lr_mult=a.table_lr_mult,
                        projection_std=a.projection_std, seeds=a.seeds, dataset=a.dataset, data_dir=a.data_dir,
                        **({} if a.dataset == "synthetic" and not a.data_option else
                           {"data_options": tuple(sorted(dict(a.data_option).items()))}),
                        **({} if a.model == "dlrm" else {"model_options": ()}))
        plan = plan_from_tuned(a.from_tuned, base) if a.from_tuned else base
    except (ValueError, KeyError) as e:
        p.error(str(e))
    cmd = "python -m experiments.twin " + " ".join(sys.argv[1:] if argv is None else argv)
    print(markdown(run_twin(plan, a.out, prefix=a.prefix, command=cmd)))


if __name__ == "__main__":
    main()
