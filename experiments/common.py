"""What every experiment shares: the plan (which grid, which data) and one run of it (:func:`base_config`), dataset
loading, the spread over seeds (:func:`mean_std`), the result and figure writers, and the command-line flags.

:func:`quick_plan` is the small synthetic run that ``python -m experiments.reproduce --quick`` makes (about 10
minutes on a quiet 2-core CPU); :func:`paper_plan` is the paper's grid (Table 2 settings: DLRM SGD lr 0.2, the
DeepCTR-Torch models Adagrad lr 0.02, batch 256, one epoch, 5 seeds for DLRM and 3 for the others).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from mlet_jax.data.registry import load_dataset
from mlet_jax.io import OutputExistsError, atomic_write_text, check_output_dir, claim_output_dir
from mlet_jax.train import RunConfig
from mlet_jax.train import parse_kv as key_value  # the train CLI's KEY=VALUE parser (JSON values), so both read alike

QUICK_DATA = (("n_train", 100_000), ("n_valid", 0), ("n_test", 30_000))


@dataclasses.dataclass(frozen=True)
class Plan:
    """The settings of every experiment (frozen, so a plan can be printed and stored with its results).

    Attributes:
        dataset, data_dir, data_options: what :func:`mlet_jax.data.load_dataset` loads.
        models: sweep models; ``ds``: embedding dimensions; ``ks``: inner dimensions (``None`` = single-layer).
        seeds: seeds per model (default ``default_seeds``).
        model_options: per-model overrides, e.g. DLRM's bottom MLP for the dataset.
        control_*: the learning-rate control (single-layer, table lr times each multiplier) at one ``d`` and the
            MLET ``k`` it is compared with.
        init_*: projection init-std scan (paper Figure 6).
        svd_*: low-rank SVD of single-layer tables of dimension ``svd_base`` to ranks ``< svd_base`` versus MLET with
            ``k = svd_base`` at ``d = rank`` (paper Table 4).
        hash_*: MLET and single-layer, with and without hashing the two largest tables by ``hash_factor``, each also
            INT8-quantized after training (paper Figures 5 and 7).
        frac: share of test samples in the most / least frequent subsets (paper Table 3: 10%).
    """

    dataset: str = "synthetic"
    data_dir: str | None = None
    data_options: tuple[tuple[str, Any], ...] = QUICK_DATA
    models: tuple[str, ...] = ("dlrm", "dcn")
    ds: tuple[int, ...] = (2, 4, 16)
    ks: tuple[int | None, ...] = (None, 64)
    default_seeds: int = 2
    seeds: tuple[tuple[str, int], ...] = ()
    model_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (("dlrm", (("bottom_mlp", (256, 128)),)),)
    batch_size: int = 256
    epochs: int = 1
    control_d: int = 4
    control_k: int = 64
    control_mults: tuple[float, ...] = (2.0, 8.0, 64.0)
    init_models: tuple[str, ...] = ("dlrm",)
    init_d: int = 4
    init_k: int = 64
    init_stds: tuple[float, ...] = (0.01, 0.25, 1.0)
    init_seeds: int = 1
    svd_models: tuple[str, ...] = ("dcn",)
    svd_bases: tuple[int, ...] = (16,)
    hash_models: tuple[str, ...] = ("dcn",)
    hash_ds: tuple[int, ...] = (4, 16)
    hash_k: int = 64
    hash_factor: float = 2.0
    compression_seeds: int = 1
    frac: float = 0.1

    def n_seeds(self, model: str) -> int:
        return dict(self.seeds).get(model, self.default_seeds)

    def options(self, model: str) -> tuple[tuple[str, Any], ...]:
        return dict(self.model_options).get(model, ())

    def data_tag(self) -> str:
        """Identifies the data in every result row (runs on different data never match)."""
        return json.dumps({"dataset": self.dataset, "data_dir": self.data_dir, **dict(self.data_options)},
                          sort_keys=True)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def base_config(plan: Plan, model: str, d: int, k: int | None, seed: int, **over) -> RunConfig:
    """One training run of ``plan``: ``model`` at embedding dim ``d``, MLET inner dim ``k`` (None: single-layer)."""
    return RunConfig(model=model, embedding="single" if k is None else "mlet", d=d, k=k, dataset=plan.dataset,
                     data_dir=plan.data_dir, data_options=tuple(plan.data_options), epochs=plan.epochs, seed=seed,
                     batch_size=plan.batch_size, model_options=tuple(plan.options(model)), **over)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for one value) in float64: the spread over seeds."""
    v = np.asarray(list(values), np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def write_results(out: str, name: str, table: str, result) -> None:
    """An experiment's ``OUT/<name>.md`` (its markdown ``table``) and ``OUT/<name>.json`` (``result``)."""
    atomic_write_text(os.path.join(out, f"{name}.md"), table + "\n")
    atomic_write_text(os.path.join(out, f"{name}.json"), json.dumps(result, indent=1))


def quick_plan() -> Plan:
    """The quick plan: synthetic default (100k training rows), DLRM (SGD) and DCN (Adagrad), d 2/4/16, k 64."""
    return Plan()


def paper_plan(dataset: str = "synthetic", data_dir: str | None = None,
               data_options: tuple[tuple[str, Any], ...] = ()) -> Plan:
    """The paper's grid on ``dataset`` (Table 2 settings; Figures 2-7; Tables 3-4)."""
    dlrm_bottom = () if dataset == "criteo" else (("bottom_mlp", (256, 128)),)
    return Plan(dataset=dataset, data_dir=data_dir, data_options=data_options,
                models=("dlrm", "dcn", "deepfm", "nfm", "autoint", "xdeepfm", "wdl"),
                ds=(2, 4, 8, 16, 32, 64), ks=(None, 16, 32, 64, 128), default_seeds=3, seeds=(("dlrm", 5),),
                model_options=(("dlrm", dlrm_bottom),), control_d=8, control_k=64,
                control_mults=(2.0, 4.0, 8.0, 16.0, 64.0),
                init_models=("dlrm",), init_d=16, init_k=32, init_stds=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0),
                init_seeds=3, svd_models=("dcn", "autoint", "xdeepfm"), svd_bases=(32, 64),
                hash_models=("dcn", "dlrm"), hash_ds=(2, 4, 8, 16, 32), hash_k=64, compression_seeds=3)


_CACHE: dict = {}


def load(plan: Plan):
    """The plan's dataset (loaded once per process)."""
    tag = plan.data_tag()
    if tag not in _CACHE:
        _CACHE.clear()
        _CACHE[tag] = load_dataset(plan.dataset, plan.data_dir, **dict(plan.data_options))
    return _CACHE[tag]


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (experiments run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    """Lay out, write (creating the folder) at 90 dpi, and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def style_axes(ax, xlabel: str, ylabel: str, *, log_base: float = 10, title: str | None = None,
               legend_size: float | None = 8) -> None:
    """Every experiment figure's axes: a log x axis, the labels, a light grid and the legend."""
    ax.set_xscale("log", base=log_base)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend_size:
        ax.legend(fontsize=legend_size)


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="results folder (runs.jsonl, tables, figures)")
    p.add_argument("--quick", action="store_true", help="the small synthetic plan (minutes on a CPU)")
    p.add_argument("--dataset", default="synthetic", help="synthetic | criteo | avazu | movielens | table | arrays")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--data-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, repeatable (JSON values)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only every N-th pending training run starting at I (parallel workers share --out)")
    p.add_argument("--analyze-only", action="store_true", help="train nothing; tabulate the rows already there")


def plan_from_args(args) -> Plan:
    if args.quick:
        return quick_plan()
    return paper_plan(args.dataset, args.data_dir, tuple(args.data_option))


# A folder holding one of these was written by an experiment before output folders were marked (mlet_jax.io).
EARLIER_OUTPUT_FILES = ("plan.json", "runs.jsonl")


def parse_plan_cli(doc: str, argv=None) -> tuple[argparse.Namespace, Plan, dict]:
    """Every experiment's command line: ``(args, plan, run_kwargs)`` with ``run_kwargs = {"shard", "train"}``.

    ``doc`` is the module docstring (its first line becomes the description); call ``run(plan, args.out,
    **run_kwargs)``.
    """
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    add_plan_args(p)
    a = p.parse_args(argv)
    try:  # before any training: an experiment writes only into its own folders (mlet_jax.io's rule)
        check_output_dir(a.out, "--out", signs=EARLIER_OUTPUT_FILES)
    except (ValueError, OutputExistsError) as e:
        p.error(str(e))
    plan, shard = plan_from_args(a), shard_from_args(a)
    claim_output_dir(a.out, "--out", signs=EARLIER_OUTPUT_FILES)  # only once every argument is known to be good
    return a, plan, {"shard": shard, "train": not a.analyze_only}


def shard_from_args(args) -> tuple[int, int]:
    if not args.shard:
        return 0, 1
    i, n = (int(x) for x in args.shard.split("/"))
    if not 0 <= i < n:
        raise SystemExit(f"--shard {args.shard}: need 0 <= I < N")
    return i, n
