"""Train one model and report its quality: the library's main entry point.

    python -m mlet_jax.train --model dlrm --embedding mlet --d 8 --k 64 --dataset synthetic --epochs 1 --seed 0 \
        --out results/run.json

The last line printed (and the file ``--out``) is one JSON object with the test AUC, LogLoss and PR-AUC, training
samples/s, parameter counts at training and inference time, the collapse check, and every setting of the run.
:func:`run` does the same from Python and is what the experiments call.

Many devices: ``--mesh data=8`` (or ``data=4,model=2``) trains on a device mesh (tables split by rows over every
device, the batch over ``data``). Several hosts: start one process per host with the same arguments plus
``--coordinator-address HOST:PORT --num-processes N --process-id I`` (or JAX's own cluster environment); every
process reads only its rows of each batch, and process 0 writes ``--out``. ``--checkpoint-dir`` saves (every
``--checkpoint-every`` steps and at the end) and resumes exactly from the newest checkpoint there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from typing import Any

import jax
import numpy as np

from mlet_jax import serving
from mlet_jax.data.bars import PROTOCOLS
from mlet_jax.data.registry import load_dataset
from mlet_jax.distributed import initialize, make_mesh, parse_mesh
from mlet_jax.embeddings import EmbeddingSpec, count_params
from mlet_jax.io import OutputExistsError, atomic_write_text, check_output_file
from mlet_jax.metrics import binary_metrics
from mlet_jax.models import MODELS, build_model, collapse_model
from mlet_jax.models.presets import paper_embedding, paper_loss_reduction, paper_optimizer
from mlet_jax.multirun import parse_seeds
from mlet_jax.optim import OptimizerSpec
from mlet_jax.runlog import RunLog, check_target
from mlet_jax.runtime import reexec_with_tuned_malloc
from mlet_jax.training import TrainConfig, Trainer, fit

# The "format" tag of the JSON record --out holds: mlet_jax.io lets a later run replace only files carrying it.
RESULT_FORMAT = "mlet_jax.train.result/1"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of one training run (``None`` means the paper's default for the model)."""

    model: str = "dlrm"
    embedding: str = "single"
    d: int = 16
    k: int | None = None
    dataset: str = "synthetic"
    data_dir: str | None = None
    data_options: tuple[tuple[str, Any], ...] = ()
    epochs: int = 1
    seed: int = 0
    batch_size: int = 256
    optimizer: str | None = None
    lr: float | None = None
    table_lr_mult: float = 1.0
    weight_decay: float = 0.0
    table_init: str = "uniform"
    table_std: float = 1e-4
    projection_init: str = "normal"
    projection_std: float | None = None
    sparse_tables: bool | None = None
    loss_reduction: str | None = None
    model_options: tuple[tuple[str, Any], ...] = ()
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    eval_batch_size: int = 8192
    mesh: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    oov: str = "error"
    export: str | None = None

    def __post_init__(self):
        if self.export is not None:  # before any data is read: a folder, a missing folder or a foreign file
            try:
                serving.check_export_path(self.export)
            except ValueError as e:
                raise ValueError(f"--export: {e}") from None
        if self.embedding not in ("single", "mlet"):
            raise ValueError(f"--embedding must be 'single' or 'mlet', got {self.embedding!r}")
        if self.embedding == "mlet" and self.k is None:
            raise ValueError("--embedding mlet needs --k (the inner dimension)")
        if self.embedding == "single" and self.k is not None:
            raise ValueError(f"--k {self.k} is MLET's inner dimension; it has no meaning with --embedding single")
        if self.epochs < 1 or self.batch_size < 1 or self.d < 1:
            raise ValueError("--epochs, --batch-size and --d must be >= 1")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be finite and > 0, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"--weight-decay must be finite and >= 0, got {self.weight_decay}")
        if not (self.table_std > 0 and math.isfinite(self.table_std)):
            raise ValueError(f"--table-std must be finite and > 0, got {self.table_std}")
        if self.projection_std is not None and not (self.projection_std >= 0 and math.isfinite(self.projection_std)):
            raise ValueError(f"--projection-std must be finite and >= 0, got {self.projection_std}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 0:
            raise ValueError(f"--early-stopping must be >= 0, got {self.early_stopping_patience}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if not (self.table_lr_mult > 0 and math.isfinite(self.table_lr_mult)):
            raise ValueError(f"--table-lr-mult must be > 0, got {self.table_lr_mult}")
        if self.mesh is not None:
            parse_mesh(self.mesh)
        if self.checkpoint_every is not None and (self.checkpoint_every < 1 or self.checkpoint_dir is None):
            raise ValueError(f"--checkpoint-every must be >= 1 and needs --checkpoint-dir, got {self.checkpoint_every}")
        _ = self.embedding_spec, self.train_config  # their own checks (k, inits, optimizers) before any data is read

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        paper = paper_optimizer(self.model)
        return OptimizerSpec(self.optimizer or paper.name, self.lr if self.lr is not None else paper.lr,
                             weight_decay=self.weight_decay)

    @property
    def embedding_spec(self) -> EmbeddingSpec:
        std = {} if self.projection_std is None else {"projection_std": self.projection_std}
        return paper_embedding(self.model, self.embedding, self.d, self.k if self.embedding == "mlet" else None,
                               table_init=self.table_init, table_std=self.table_std,
                               projection_init=self.projection_init, oov=self.oov, **std)

    @property
    def train_config(self) -> TrainConfig:
        opt = self.optimizer_spec
        tables = opt.scaled(self.table_lr_mult) if self.table_lr_mult != 1.0 else None
        reduction = self.loss_reduction or paper_loss_reduction(self.model)
        return TrainConfig(optimizer=opt, table_optimizer=tables, sparse_tables=self.sparse_tables,
                           loss_reduction=reduction)

    def resolved(self) -> dict:
        """The settings with the paper defaults filled in (what the JSON reports)."""
        out = dataclasses.asdict(self)
        out["optimizer"], out["lr"] = self.optimizer_spec.name, self.optimizer_spec.lr
        out["projection_std"] = self.embedding_spec.projection_std
        out["data_options"] = dict(self.data_options)
        out["model_options"] = dict(self.model_options)
        out["sparse_tables"] = self.train_config.sparse
        out["loss_reduction"] = self.train_config.loss_reduction
        return out


def load(cfg: RunConfig):
    return load_dataset(cfg.dataset, cfg.data_dir, **dict(cfg.data_options))


def run(cfg: RunConfig, dataset=None, *, progress: bool = False, keep_state: bool = False,
        callbacks=(), log: str | None = None, spectra_every: int | None = None, log_every: int = 50) -> dict:
    """Train and evaluate one model; returns the result record (see the module docstring).

    ``dataset`` skips loading (experiments reuse one dataset across runs). With ``keep_state`` the record also
    holds ``"_state"``, ``"_trainer"`` and ``"_dataset"`` for further analysis (not JSON-serializable).
    ``callbacks`` go to :func:`mlet_jax.training.fit` (``cb(step, state)`` after every step). ``log``: append the
    run log (:mod:`mlet_jax.runlog`; its start record holds the settings, a last ``test`` record the test metrics)
    there. ``spectra_every``: record the tables' spectra every N steps (:mod:`mlet_jax.spectra`), into the log and
    the record's ``"spectra"``. ``log_every``: steps between logged training losses.
    """
    ds = dataset if dataset is not None else load(cfg)
    model = build_model(cfg.model, ds.schema, cfg.embedding_spec, **dict(cfg.model_options))
    mesh = make_mesh(**parse_mesh(cfg.mesh)) if cfg.mesh else None
    trainer = Trainer(model, cfg.train_config, mesh=mesh)
    t0 = time.perf_counter()
    state, hist = fit(trainer, ds.train, batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed,
                      valid=ds.valid, eval_every=cfg.eval_every,
                      early_stopping_patience=cfg.early_stopping_patience, progress=progress,
                      callbacks=callbacks, checkpoint_dir=cfg.checkpoint_dir, checkpoint_every=cfg.checkpoint_every,
                      run_log=log, log_meta={"settings": cfg.resolved()}, spectra_every=spectra_every,
                      log_every=log_every)
    wall = time.perf_counter() - t0
    logits = trainer.predict(state.params, ds.test, cfg.eval_batch_size)
    test = binary_metrics(ds.test.label, logits)
    served_model, served_params = collapse_model(trainer.model, state.params)
    rec: dict[str, Any] = {
        "test_auc": test["auc"], "test_logloss": test["logloss"], "test_pr_auc": test["pr_auc"],
        "valid": hist.evals[-1] if hist.evals else None,
        "train_samples_per_s": hist.samples_per_second,
        "first_step_s": hist.first_step_seconds,
        "wall_s": wall,
        "params_train": count_params(state.params),
        "params_inference": count_params(served_params),
        "embedding_params_inference": ds.schema.total_rows * cfg.d,
        "steps": int(state.step),
        "final_loss": hist.losses[-1] if hist.losses else None,
        "settings": cfg.resolved(),
        "dataset_meta": {k: v for k, v in ds.meta.items() if not isinstance(v, np.ndarray)},
        "machine": {"platform": platform.platform(), "backend": jax.default_backend(),
                    "devices": len(jax.devices()), "processes": jax.process_count(),
                    "mesh": dict(mesh.shape) if mesh is not None else None,
                    "cpus": os.cpu_count(), "jax": jax.__version__},
    }
    if cfg.embedding == "mlet":
        n = min(len(ds.test), 4096)
        # the collapsed model on the same devices as the trained one (padded tables on a mesh)
        check_model, check_params = collapse_model(trainer.model, state.params, strip=False)
        served = Trainer(check_model, cfg.train_config, mesh=mesh).predict(check_params, ds.test.take(slice(0, n)))
        rec["collapse_max_abs_diff"] = float(np.max(np.abs(served - logits[:n])))
    if spectra_every is not None:
        rec["spectra"] = hist.spectra
    if log is not None:
        rec["run_log"] = log
        if jax.process_index() == 0:
            with RunLog(log) as rl:
                rl.write({"event": "test", "step": int(state.step), **test})
    if cfg.export is not None:  # the collapsed model as one jax.export artifact (mlet_jax.serving)
        rec["export"] = str(serving.export(trainer.model, state.params, cfg.export, schema=ds.schema))
    if keep_state:
        rec.update(_state=state, _trainer=trainer, _dataset=ds, _test_logits=logits)
    return rec


def parse_kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        val = json.loads(v)
    except json.JSONDecodeError as e:
        if v.strip()[:1] in "[{\"" and v.strip():  # meant as JSON: say so instead of passing a string on
            raise argparse.ArgumentTypeError(f"{k}={v!r}: the value is not valid JSON ({e.msg} at column "
                                             f"{e.colno})") from None
        val = v
    if isinstance(val, list):
        val = tuple(val)
    return k.replace("-", "_"), val


def _tri(text: str) -> bool | None:
    table = {"auto": None, "on": True, "off": False}
    if text not in table:
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")
    return table[text]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlet_jax.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="dlrm", choices=sorted(MODELS), help="CTR model")
    p.add_argument("--embedding", default="single", choices=["single", "mlet"],
                   help="single-layer table or MLET (table n x k times projection k x d)")
    p.add_argument("--d", type=int, default=16, help="embedding dimension d")
    p.add_argument("--k", type=int, default=None, help="MLET inner dimension k (required for --embedding mlet)")
    p.add_argument("--dataset", default="synthetic",
                   help="synthetic | criteo | avazu | movielens | table | arrays")
    p.add_argument("--data-dir", default=None, help="raw file/folder, prepared cache, or .npz prefix (arrays)")
    p.add_argument("--data-option", type=parse_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, repeatable (e.g. n_train=100000, min_count=4)")
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                   help="a BARS protocol (mlet_jax.data.bars): FuxiCTR's preprocessing of --data-dir (the Kaggle file, "
                        "BARS's train/valid/test.csv, or a prepared cache), an x4 split, and --d 16 (_001) or 40 "
                        "(_002) unless --d is given")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="parameter init, data order and dropout")
    p.add_argument("--seeds", type=parse_seeds, default=None, metavar="0-7|0,3,5",
                   help="train these seeds at once as one vmapped program (mlet_jax.multirun), all on the first "
                        "seed's batch order; prints and writes (--out) one JSON line per run")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--optimizer", choices=["sgd", "adagrad"], default=None,
                   help="default: the paper's (SGD for DLRM, Adagrad otherwise), with torch semantics")
    p.add_argument("--lr", type=float, default=None, help="default: the paper's (0.2 SGD for DLRM, 0.02 Adagrad)")
    p.add_argument("--table-lr-mult", type=float, default=1.0,
                   help="multiply the learning rate of embedding tables (the control for MLET claims)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="torch-style coupled weight decay")
    p.add_argument("--table-init", choices=["uniform", "normal", "xavier"], default="uniform",
                   help="uniform: U(+-1/sqrt(n_field)); normal: N(0, --table-std); xavier: Glorot uniform")
    p.add_argument("--table-std", type=float, default=1e-4)
    p.add_argument("--projection-init", choices=["normal", "uniform", "xavier"], default="normal")
    p.add_argument("--projection-std", type=float, default=None,
                   help="MLET projection init std (default: 0.25 for DLRM, 0.5 otherwise, as the paper)")
    p.add_argument("--sparse-tables", type=_tri, default=None, choices=[None, True, False], metavar="auto|on|off",
                   help="row-sparse table updates (auto: row-sparse, exact for SGD and Adagrad; weight decay or "
                        "momentum on tables needs 'off': dense updates of every row)")
    p.add_argument("--loss-reduction", choices=["mean", "sum"], default=None,
                   help="default: mean for DLRM (its reference), sum for the DeepCTR-Torch models (as DeepCTR)")
    p.add_argument("--model-option", type=parse_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="model setting, repeatable (e.g. bottom_mlp=[256,128])")
    p.add_argument("--eval-every", type=int, default=None, help="steps between validation evaluations")
    p.add_argument("--early-stopping", type=int, default=None, dest="early_stopping_patience",
                   help="stop after this many evaluations without a better validation AUC")
    p.add_argument("--mesh", default=None, metavar="data=N[,model=M]",
                   help="train on a device mesh: the batch over 'data', table rows over every device "
                        "(default: one device)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="save the train state here and resume from its newest checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: the end)")
    g = p.add_argument_group("several processes (jax.distributed; default: JAX's own cluster discovery when "
                             "--num-processes is given without an address, else one process)")
    g.add_argument("--coordinator-address", default=None, metavar="HOST:PORT", help="process 0's address")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    p.add_argument("--oov", choices=["error", "row"], default="error",
                   help="ids outside a field's vocabulary: error (refused; the tables are unchanged) or row (one "
                        "extra row per field that every unseen id maps to), in training, evaluation and serving")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="at the end, write the collapsed model as one serving artifact (jax.export; "
                        "mlet_jax.serving.load(PATH) predicts without the model code)")
    p.add_argument("--out", default=None, help="write the JSON result here (process 0 only)")
    p.add_argument("--log", default=None, metavar="PATH",
                   help="append the run log (JSON lines: loss, samples/s, evaluations, spectra) here; default: next "
                        "to --out (results/run.json -> results/run.log.jsonl); python -m mlet_jax.plot draws it")
    p.add_argument("--spectra-every", type=int, default=None, metavar="N",
                   help="every N steps, log each field's collapsed-table singular values, effective rank and "
                        "information abundance (mlet_jax.spectra)")
    p.add_argument("--log-every", type=int, default=50, metavar="N", help="steps between logged training losses")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _check_out(path: str) -> None:
    """Fail before training when ``--out`` cannot be written (a folder, a missing or unwritable parent) or holds a
    file mlet_jax did not write (:func:`mlet_jax.io.check_output_file`: never overwritten)."""
    check_output_file(path, "--out")


def _protocol(args, kw: dict, argv: list[str] | None) -> None:
    """``--protocol``: train on the BARS preset (dataset ``bars``) with its embedding dim unless ``--d`` is given."""
    proto = PROTOCOLS[args.protocol]
    if args.dataset not in ("synthetic", proto.dataset, "bars"):  # synthetic: the default, i.e. not given
        raise ValueError(f"--protocol {proto.name} is a protocol of {proto.dataset}, not of --dataset {args.dataset}")
    if args.data_dir is None:
        raise ValueError(f"--protocol {proto.name} needs --data-dir: the Kaggle file, a folder with BARS's "
                         f"train.csv, valid.csv and test.csv, or a prepared cache")
    if any(k == "protocol" for k, _ in kw["data_options"]):
        raise ValueError("give the protocol once, as --protocol (not also --data-option protocol=...)")
    kw["dataset"], kw["data_options"] = "bars", (*kw["data_options"], ("protocol", proto.name))
    if not any(a == "--d" or a.startswith("--d=") for a in (sys.argv[1:] if argv is None else argv)):
        kw["d"] = proto.embedding_dim


def _default_log(out: str) -> str:
    """The run log next to ``--out``: ``results/run.json`` -> ``results/run.log.jsonl``."""
    return (out[:-5] if out.endswith(".json") else out) + ".log.jsonl"


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    args = p.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["data_options"] = tuple(args.data_option)
    kw["model_options"] = tuple(args.model_option)
    try:
        if args.protocol:
            _protocol(args, kw, argv)
        cfg = RunConfig(**kw)
        if cfg.embedding == "mlet" and cfg.k < cfg.d:  # RunConfig from Python allows it (notebook 02 studies k < d)
            raise ValueError(f"--k must be >= --d (the paper's MLET: the inner dimension is at least the embedding "
                             f"dimension), got k={cfg.k} < d={cfg.d}")
        if args.out:
            _check_out(args.out)
        log = args.log or (_default_log(args.out) if args.out else None)
        if log is not None:
            if args.out and os.path.abspath(log) == os.path.abspath(args.out):
                raise ValueError(f"--log and --out name the same file {log!r}; give the log another name")
            check_target(log, "--log")
        if args.spectra_every is not None and args.spectra_every < 1:
            raise ValueError(f"--spectra-every must be >= 1, got {args.spectra_every}")
        if args.log_every < 1:
            raise ValueError(f"--log-every must be >= 1, got {args.log_every}")
        n_proc = args.num_processes
        if (n_proc is not None and n_proc < 1) or (args.process_id is not None and args.process_id < 0):
            raise ValueError(f"--num-processes must be >= 1 and --process-id >= 0, got {n_proc} and "
                             f"{args.process_id}")
        if args.export and ((n_proc or 1) > 1 or args.coordinator_address):
            raise ValueError("--export runs in one process only (the tables of several processes are not gathered)")
        if args.coordinator_address is not None and (n_proc is None or args.process_id is None):
            raise ValueError("--coordinator-address needs --num-processes and --process-id")
        if n_proc is not None and args.process_id is not None and args.process_id >= n_proc:
            raise ValueError(f"--process-id must be < --num-processes ({n_proc}), got {args.process_id}")
    except (ValueError, OutputExistsError) as e:
        p.error(str(e))
    if args.seeds is not None:  # several runs in one program: its own checks (usage errors), output and loop
        from mlet_jax import multirun

        return multirun.cli(p, args, cfg, sys.argv[1:] if argv is None else argv, RESULT_FORMAT)
    if (args.num_processes or 1) > 1 or args.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        initialize(args.coordinator_address, args.num_processes, args.process_id)
    rec = run(cfg, progress=not args.no_progress, log=log, spectra_every=args.spectra_every,
              log_every=args.log_every)
    text = json.dumps({"format": RESULT_FORMAT, **rec}, default=float)
    if args.out and jax.process_index() == 0:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return rec


if __name__ == "__main__":
    reexec_with_tuned_malloc()
    main(sys.argv[1:])
