"""Tuned against tuned: every arm (single-layer; MLET at each k) gets the same search budget over its own
learning-rate knobs, selected on validation AUC only; each winner then trains fresh seeds, compared on test.

    python -m experiments.tuned --quick --out experiments/results/quick
    python -m mlet_jax.data.fetch ml-100k         # MovieLens-100K from the recbole 1.2.1 wheel, into the cache
    python -m experiments.tuned --out experiments/results/ml100k --dataset movielens \
        --data-dir ~/.cache/mlet_jax/raw/ml-100k --data-option valid_fraction=0.1 --prefix tuned_ml100k

The search. Every arm draws the same ``budget`` trials from one seeded stream: trial 0 is the paper's setting (lr of
the paper's optimizer, table-lr multiplier 1, the paper's projection std), trials 1.. draw ``lr`` log-uniform in
``[lr0/4, 4 lr0]`` and the tables' multiplier log-uniform in ``[1/4, 128]`` (the same draws for every arm); MLET arms
also draw the projection std log-uniform in ``[0.05, 1]``. All trials of one arm train as one vmapped program
(:mod:`mlet_jax.multirun`) on the same batches and init seed (common random numbers), and the winner is the trial
with the best validation AUC (a diverged trial never wins). The test split is not read during the search.

The comparison. Each winner trains ``seeds`` fresh seeds (disjoint from the search seed) one run at a time, so the
seed sets both the init and the batch order, and arm A and arm B see the same batches for the same seed: the
difference ``test_auc(MLET k, seed) - test_auc(single, seed)`` is paired; we report its mean, its standard error
``std(ddof=1) / sqrt(seeds)`` and a verdict ("MLET wins" / "single wins" when the mean is more than 2 SE from 0,
otherwise "tie").

Expected runtime: quick (DLRM, SGD, d = 4, k in {16, 64}, budget 8, 5 seeds, 40k training rows): 3 search programs of
8 runs and 15 single runs, ~4-8 minutes on 2 loaded cores. Expected result: unknown a priori; the controls
(experiments/controls.py) suggest that once the single-layer model may raise its table learning rate, MLET's gain
shrinks or reverses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from experiments.common import key_value, pyplot, quick_plan, save_figure
from mlet_jax.data.registry import load_dataset
from mlet_jax.io import atomic_write_text
from mlet_jax.models.presets import paper_embedding, paper_optimizer
from mlet_jax.multirun import run_many
from mlet_jax.train import RunConfig
from mlet_jax.train import run as train_run

LR_SPAN = 4.0  # lr in [lr0 / LR_SPAN, lr0 * LR_SPAN]
MULT_RANGE = (0.25, 128.0)
STD_RANGE = (0.05, 1.0)
SEARCH_SEED = 1000  # init / batch-order seed of every search trial; the final seeds are 0..seeds-1
QUICK_DATA = (("n_test", 20_000), ("n_train", 40_000), ("n_valid", 10_000))  # sorted, as the CLI sorts options
DLRM_OPTIONS = (("bottom_mlp", (64, 32)), ("top_mlp", (64, 32)))  # small MLPs: the quick plan runs in minutes


@dataclasses.dataclass(frozen=True)
class TunedPlan:
    """What :func:`run` compares (frozen; stored with its results)."""
    model: str = "dlrm"
    d: int = 4
    ks: tuple[int, ...] = (16, 64)
    budget: int = 8
    seeds: int = 5
    search_seed: int = 0  # seeds the trial draws
    dataset: str = "synthetic"
    data_dir: str | None = None
    data_options: tuple[tuple[str, object], ...] = QUICK_DATA
    model_options: tuple[tuple[str, object], ...] = DLRM_OPTIONS
    batch_size: int = 256
    epochs: int = 1

    def __post_init__(self):
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 (a standard error needs two), got {self.seeds}")
        if self.d < 1 or any(k < self.d for k in self.ks):
            raise ValueError(f"need d >= 1 and every k >= d, got d={self.d}, ks={self.ks}")


def arms(plan: TunedPlan) -> list[int | None]:
    """``None`` (single-layer) then each MLET ``k``."""
    return [None, *plan.ks]


def trials(plan: TunedPlan, k: int | None) -> list[dict]:
    """The arm's ``budget`` search points ``{"lr", "table_lr_mult", "projection_std"}`` (std ``None`` for
    single-layer). The ``lr`` and multiplier draws are the same for every arm."""

    lr0 = paper_optimizer(plan.model).lr
    std0 = paper_embedding(plan.model, "mlet", plan.d, plan.d).projection_std
    rng = np.random.default_rng(plan.search_seed)
    u = rng.uniform(size=(plan.budget, 3))  # drawn for every arm, so the shared knobs agree
    out = [{"lr": lr0, "table_lr_mult": 1.0, "projection_std": std0 if k is not None else None}]
    for i in range(1, plan.budget):
        lr = lr0 * LR_SPAN ** (2 * u[i, 0] - 1)
        mult = MULT_RANGE[0] * (MULT_RANGE[1] / MULT_RANGE[0]) ** u[i, 1]
        std = STD_RANGE[0] * (STD_RANGE[1] / STD_RANGE[0]) ** u[i, 2]
        out.append({"lr": float(lr), "table_lr_mult": float(mult),
                    "projection_std": float(std) if k is not None else None})
    return out


def config(plan: TunedPlan, k: int | None, trial: dict, seed: int):
    return RunConfig(model=plan.model, embedding="single" if k is None else "mlet", d=plan.d, k=k,
                     dataset=plan.dataset, data_dir=plan.data_dir, data_options=plan.data_options, seed=seed,
                     batch_size=plan.batch_size, epochs=plan.epochs, lr=trial["lr"],
                     table_lr_mult=trial["table_lr_mult"], projection_std=trial["projection_std"],
                     model_options=plan.model_options)


def paired(a: dict, b: dict) -> dict:
    """Mean, standard error and n of ``a[seed] - b[seed]`` over the common seeds."""
    seeds = sorted(set(a) & set(b))
    diff = np.array([a[s] - b[s] for s in seeds], np.float64)
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "se": se, "n": n, "diffs": diff.tolist()}


def verdict(p: dict, a: str, b: str) -> str:
    """``a`` wins / ``b`` wins when the paired mean is beyond 2 standard errors, else a tie."""
    if not (math.isfinite(p["mean"]) and math.isfinite(p["se"])):
        return "no data"
    if abs(p["mean"]) < 1e-4:  # below the resolution of an AUC on these test sets
        return "tie"
    if p["mean"] > 2 * p["se"]:
        return f"{a} wins"
    if p["mean"] < -2 * p["se"]:
        return f"{b} wins"
    return "tie"


def select(search_rows: list[dict]) -> int:
    """Index of the trial with the best validation AUC (non-finite never wins). ValueError if all diverged."""
    best, best_auc = None, -math.inf
    for i, r in enumerate(search_rows):
        auc = r["valid_auc"]
        if auc is not None and math.isfinite(auc) and auc > best_auc:
            best, best_auc = i, auc
    if best is None:
        raise ValueError("every search trial diverged or has no validation AUC")
    return best


def _name(k):
    return "single" if k is None else f"mlet_k{k}"


def search(plan: TunedPlan, ds, log=print) -> dict:
    """Per arm: every trial's validation AUC (one vmapped program per arm) and the winner's index."""
    out = {}
    for k in arms(plan):
        pts = trials(plan, k)
        t0 = time.perf_counter()
        recs = run_many([config(plan, k, t, SEARCH_SEED) for t in pts], ds)
        rows = []
        for t, r in zip(pts, recs, strict=True):
            v = r["valid"] or {}
            rows.append({**t, "valid_auc": v.get("auc"), "valid_logloss": v.get("logloss"),
                         "diverged_at_step": r["diverged_at_step"]})
        win = select(rows)
        out[_name(k)] = {"k": k, "trials": rows, "winner": win, "seconds": round(time.perf_counter() - t0, 1)}
        log(f"search {_name(k)}: winner {pts[win]} valid AUC {rows[win]['valid_auc']:.4f} "
            f"({out[_name(k)]['seconds']} s)")
    return out


def final(plan: TunedPlan, ds, found: dict, log=print) -> dict:
    """Each winner trained with seeds ``0..seeds-1`` (one run each: the seed also orders the batches)."""
    out = {}
    for k in arms(plan):
        e = found[_name(k)]
        t = {x: e["trials"][e["winner"]][x] for x in ("lr", "table_lr_mult", "projection_std")}
        t0 = time.perf_counter()
        per_seed = []
        for s in range(plan.seeds):
            r = train_run(config(plan, k, t, s), ds)
            per_seed.append({"seed": s, "test_auc": r["test_auc"], "test_logloss": r["test_logloss"],
                             "valid_auc": (r["valid"] or {}).get("auc")})
        out[_name(k)] = {"k": k, "settings": t, "runs": per_seed, "seconds": round(time.perf_counter() - t0, 1)}
        aucs = [x["test_auc"] for x in per_seed]
        log(f"final {_name(k)}: test AUC {np.mean(aucs):.4f} +- {np.std(aucs, ddof=1):.4f} "
            f"({out[_name(k)]['seconds']} s)")
    return out


def analyze(finals: dict, plan: TunedPlan) -> list[dict]:
    """Per MLET arm: paired test AUC / LogLoss differences against the tuned single-layer arm."""
    def by_seed(name, metric):
        return {x["seed"]: x[metric] for x in finals[name]["runs"] if math.isfinite(x[metric])}

    out = []
    for k in plan.ks:
        auc = paired(by_seed(_name(k), "test_auc"), by_seed("single", "test_auc"))
        ll = paired(by_seed(_name(k), "test_logloss"), by_seed("single", "test_logloss"))
        out.append({"k": k, "auc_diff": auc, "logloss_diff": ll, "verdict": verdict(auc, f"MLET k={k}", "single")})
    return out


def markdown(res: dict) -> str:
    plan, found, finals = res["plan"], res["search"], res["final"]
    lines = [f"Model `{plan['model']}`, d = {plan['d']}, data `{plan['dataset']}` {dict(plan['data_options'])}; "
             f"budget {plan['budget']} trials per arm selected on validation AUC; winners trained on "
             f"{plan['seeds']} fresh seeds (test).", "",
             "| arm | winner lr | table-lr mult | projection std | effective table lr | search valid AUC "
             "| test AUC (mean +- std) | test LogLoss |", "|---|---|---|---|---|---|---|---|"]
    for name, f in finals.items():
        s = f["settings"]
        a = np.array([x["test_auc"] for x in f["runs"]])
        ll = np.array([x["test_logloss"] for x in f["runs"]])
        v = found[name]["trials"][found[name]["winner"]]["valid_auc"]
        std = "-" if s["projection_std"] is None else f"{s['projection_std']:.3g}"
        lines.append(f"| {name} | {s['lr']:.3g} | {s['table_lr_mult']:.3g} | {std} | "
                     f"{s['lr'] * s['table_lr_mult']:.3g} | {v:.4f} | {a.mean():.4f} +- {a.std(ddof=1):.4f} | "
                     f"{ll.mean():.4f} +- {ll.std(ddof=1):.4f} |")
    lines += ["", "| comparison | test AUC difference (paired, mean +- SE) | test LogLoss difference | verdict |",
              "|---|---|---|---|"]
    for e in res["comparisons"]:
        a, ll = e["auc_diff"], e["logloss_diff"]
        lines.append(f"| MLET k={e['k']} - single | {a['mean']:+.4f} +- {a['se']:.4f} (n={a['n']}) | "
                     f"{ll['mean']:+.4f} +- {ll['se']:.4f} | **{e['verdict']}** |")
    lines += ["", "Search trials (validation AUC; trial 0 is the paper's setting):", "",
              "| arm | " + " | ".join(f"t{i}" for i in range(plan["budget"])) + " |",
              "|---|" + "---|" * plan["budget"]]
    for name, f in found.items():
        cells = []
        for i, t in enumerate(f["trials"]):
            v = t["valid_auc"]
            txt = "div" if v is None or not math.isfinite(v) else f"{v:.4f}"
            cells.append(f"**{txt}**" if i == f["winner"] else txt)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{res['command']}`; wall time {res['seconds']:.0f} s "
              f"(load average {res['load_avg']:.1f} on {os.cpu_count()} CPUs)."]
    return "\n".join(lines)


def figure(res: dict, path: str) -> None:
    """Left: every trial's validation AUC against its effective table lr, per arm. Right: test AUC per seed."""
    plt = pyplot()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(res["final"])
    for j, name in enumerate(names):
        f = res["search"][name]
        xs = [t["lr"] * t["table_lr_mult"] for t in f["trials"]]
        ys = [t["valid_auc"] if t["valid_auc"] is not None and math.isfinite(t["valid_auc"]) else np.nan
              for t in f["trials"]]
        a0.scatter(xs, ys, label=name, marker="os^vD"[j % 5])
        w = f["winner"]
        a0.scatter([xs[w]], [ys[w]], s=160, facecolors="none", edgecolors="black")
        runs = res["final"][name]["runs"]
        a1.plot([j] * len(runs), [x["test_auc"] for x in runs], "o", alpha=0.6)
        a1.errorbar([j + 0.15], [np.mean([x["test_auc"] for x in runs])],
                    yerr=[np.std([x["test_auc"] for x in runs], ddof=1)], fmt="s", color="black", capsize=4)
    seeds = sorted({x["seed"] for n in names for x in res["final"][n]["runs"]})
    for s in seeds:  # paired lines
        a1.plot(range(len(names)), [next((x["test_auc"] for x in res["final"][n]["runs"] if x["seed"] == s), np.nan)
                                    for n in names], color="gray", alpha=0.3, lw=0.8)
    a0.set_xscale("log")
    a0.set_xlabel("effective table lr (lr x table-lr mult)")
    a0.set_ylabel("validation AUC")
    a0.set_title("search (circled: winner)")
    a0.legend(fontsize=8)
    a0.grid(alpha=0.3)
    a1.set_xticks(range(len(names)), names)
    a1.set_ylabel("test AUC")
    a1.set_title("winners on fresh seeds (lines pair seeds)")
    a1.grid(alpha=0.3)
    fig.suptitle(f"tuned vs tuned: {res['plan']['model']} d={res['plan']['d']} on {res['plan']['dataset']}")
    save_figure(fig, path)


class NoValidation(ValueError):
    """The data set has no validation split, so nothing can be selected without the test split."""

def previous(path: str, plan_json: dict, what: str) -> dict | None:
    """The result at ``path`` when it is ours and was made by the same plan (then nothing retrains); ``None`` when
    it is missing or from another plan; ValueError when the file is not one of ours (never overwritten)."""
    if not os.path.exists(path):
        return None
    try:
        res = json.load(open(path))
        if not isinstance(res, dict) or "comparisons" not in res:
            raise ValueError
    except (ValueError, OSError):
        raise ValueError(f"out: {path} exists and is not a {what} result; not overwriting it") from None
    return res if json.loads(json.dumps(res["plan"])) == json.loads(json.dumps(plan_json)) else None


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> dict | None:
    """The step of ``python -m experiments.reproduce``: the quick :class:`TunedPlan` for the quick (synthetic) plan,
    else the same comparison on the plan's data (which needs a validation split). Not sharded: skipped in shards."""
    if shard != (0, 1):
        log("tuned: not sharded; run it once without --shard")
        return None

    if plan == quick_plan():
        tp = TunedPlan()
    elif plan.dataset != "synthetic":
        tp = TunedPlan(dataset=plan.dataset, data_dir=plan.data_dir, data_options=plan.data_options, d=plan.control_d,
                       ks=tuple(k for k in plan.ks if k is not None and k >= plan.control_d), epochs=plan.epochs,
                       batch_size=plan.batch_size, model_options=DLRM_OPTIONS if plan.dataset != "criteo" else ())
    else:  # other synthetic plans (tests, custom sizes): the quick plan's sizes would dwarf them
        log("tuned: runs for the quick plan or real data; this synthetic plan skips it "
            "(python -m experiments.tuned for custom sizes)")
        return None
    res = previous(os.path.join(out, "tuned.json"), dataclasses.asdict(tp), "tuned.py")
    if res is None and not train:
        log("tuned: no result for this plan and --analyze-only; skipped")
        return None
    try:
        return run_tuned(tp, out, log=log, command=f"python -m experiments.reproduce ... --out {out} (step tuned)")
    except NoValidation as e:
        log(f"tuned: skipped: {e}")
        return None


def run_tuned(plan: TunedPlan, out: str, *, log=print, prefix: str = "tuned", command: str = "") -> dict:
    """Search, final runs, analysis; writes ``{prefix}.json``, ``{prefix}.md`` and ``fig_{prefix}.png``. A result
    of the same plan already there is re-rendered, not retrained."""

    old = previous(os.path.join(out, f"{prefix}.json"), dataclasses.asdict(plan), "tuned.py")
    if old is not None:
        log(f"tuned: reusing {prefix}.json (same plan)")
        atomic_write_text(os.path.join(out, f"{prefix}.md"), markdown(old) + "\n")
        figure(old, os.path.join(out, f"fig_{prefix}.png"))
        return old
    t0 = time.perf_counter()
    ds = load_dataset(plan.dataset, plan.data_dir, **dict(plan.data_options))
    if ds.valid is None or len(ds.valid) == 0:
        raise NoValidation("the data set has no validation split; selection needs one (e.g. --data-option n_valid=N)")
    found = search(plan, ds, log)
    finals = final(plan, ds, found, log)
    res = {"plan": dataclasses.asdict(plan), "search": found, "final": finals,
           "comparisons": analyze(finals, plan), "seconds": round(time.perf_counter() - t0, 1),
           "load_avg": os.getloadavg()[0], "command": command or f"python -m experiments.tuned --out {out}"}
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, f"{prefix}.json"), json.dumps(res, indent=1, default=float))
    atomic_write_text(os.path.join(out, f"{prefix}.md"), markdown(res) + "\n")
    figure(res, os.path.join(out, f"fig_{prefix}.png"))
    return res


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="results folder (tuned.json, tuned.md, fig_tuned.png)")
    p.add_argument("--quick", action="store_true", help="the quick synthetic plan (the defaults below)")
    p.add_argument("--model", default="dlrm")
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--ks", type=_ints, default=(16, 64), help="MLET inner dimensions, e.g. 16,64")
    p.add_argument("--budget", type=int, default=8, help="search trials per arm (the same for every arm)")
    p.add_argument("--seeds", type=int, default=5, help="fresh seeds per winner (>= 2)")
    p.add_argument("--search-seed", type=int, default=0)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--data-option", type=key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--prefix", default="tuned", help="output name prefix (e.g. tuned_ml100k)")
    return p


def plan_from_args(p: argparse.ArgumentParser, a) -> TunedPlan:
    opts = dict(QUICK_DATA) if a.dataset == "synthetic" else {}
    opts.update(a.data_option)
    if a.dataset != "synthetic" and not a.data_dir:
        p.error(f"argument --data-dir: --dataset {a.dataset} needs its cache folder")
    if a.data_dir and not os.path.isdir(a.data_dir):
        p.error(f"argument --data-dir: {a.data_dir!r} is not a folder")
    try:
        return TunedPlan(model=a.model, d=a.d, ks=a.ks, budget=a.budget, seeds=a.seeds, search_seed=a.search_seed,
                         dataset=a.dataset, data_dir=a.data_dir, data_options=tuple(sorted(opts.items())),
                         batch_size=a.batch_size, epochs=a.epochs,
                         model_options=DLRM_OPTIONS if a.model == "dlrm" else ())
    except ValueError as e:
        p.error(str(e))


def main(argv=None):
    p = parser()
    a = p.parse_args(argv)
    plan = plan_from_args(p, a)
    cmd = "python -m experiments.tuned " + " ".join(sys.argv[1:] if argv is None else argv)
    res = run_tuned(plan, a.out, prefix=a.prefix, command=cmd)
    print(markdown(res))


if __name__ == "__main__":
    main()
