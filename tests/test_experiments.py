"""Each experiment end to end on a tiny plan, plus the run store's file handling (resume, parallel appends)."""

import dataclasses
import json
import multiprocessing as mp
import os
import statistics

import numpy as np
import pytest

from experiments import common, controls, report, reproduce, savings, store, subsets, sweep
from mlet_jax.data.synthetic import make_synthetic

TINY_DATA = (("n_train", 2_560), ("n_valid", 0), ("n_test", 1_500), ("vocab_sizes", (4, 30, 200, 600)),
             ("num_dense", 2))


def tiny_plan(**over) -> common.Plan:
    plan = common.Plan(
        data_options=TINY_DATA, models=("dcn",), ds=(2, 4), ks=(None, 4), default_seeds=2,
        model_options=(("dcn", (("dnn", (16,)), ("cross_num", 1))), ("dlrm", (("bottom_mlp", (8,)),
                                                                              ("top_mlp", (16,))))),
        control_d=2, control_k=4, control_mults=(4.0,), init_models=("dcn",), init_d=2, init_k=4,
        init_stds=(0.05, 0.5), svd_models=("dcn",), svd_bases=(4,), hash_models=("dcn",), hash_ds=(4,),
        hash_k=4, frac=0.2)
    return dataclasses.replace(plan, **over)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    plan = tiny_plan()
    logs = []
    timing = reproduce.run(plan, out, log=logs.append)
    return plan, out, timing, logs


def test_reproduce_writes_every_file(tiny_run):
    plan, out, timing, _ = tiny_run
    for f in ("runs.jsonl", "sweep.md", "sweep_summary.json", "savings.md", "savings.json", "frequency.md",
              "init_variance.md", "fig_init_variance.png", "compression.md", "compression.json",
              "fig_compression_dcn.png", "controls.md", "controls.json", "report.md", "plan.json", "timing.json",
              "fig_sweep_synthetic_dcn.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    text = open(os.path.join(out, "report.md")).read()
    assert "Which claims this run reproduces" in text and "![fig_sweep_synthetic_dcn.png]" in text
    assert set(reproduce.STEPS) <= set(timing)


def test_runs_are_unique_and_shared(tiny_run):
    plan, out, _, logs = tiny_run
    rows = store.read_rows(os.path.join(out, "runs.jsonl"))
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))  # no run trained twice across experiments
    # sweep 8 + controls 2 (x4) + init 1 (std 0.05; 0.5 is the default) + hashed 2; svd/int8 rows are sweep rows
    assert len(rows) == 13
    assert sum(line.startswith("[") for line in logs) == 13
    single4 = [r for r in rows if r["d"] == 4 and r["k"] is None and "|hash" not in r["data"] and r["seed"] == 0]
    assert {"int8", "svd:2"} <= set(single4[0]["evals"])


def test_savings_consistent_with_sweep_rows(tiny_run):
    plan, out, _, _ = tiny_run
    rows = [r for r in store.read_rows(os.path.join(out, "runs.jsonl")) if store.is_plain(r)
            and r["data"] == plan.data_tag()]
    res = json.load(open(os.path.join(out, "savings.json")))
    for e in res["entries"]:
        single = np.mean([r["test_auc"] for r in rows if r["model"] == e["model"] and r["d"] == e["single_d"]
                          and r["k"] is None])
        assert e["single"] == pytest.approx(single)
        ok = {(d, k) for d in plan.ds for k in plan.ks if k and k >= d and d < e["single_d"]
              and np.mean([r["test_auc"] for r in rows if r["d"] == d and r["k"] == k]) >= single}
        if e["mlet_d"] is None:
            assert not ok
        else:
            assert e["mlet_d"] == min(d for d, _ in ok) and e["reduction"] == e["single_d"] / e["mlet_d"]
            assert e["mlet"] == pytest.approx(np.mean([r["test_auc"] for r in rows if r["d"] == e["mlet_d"]
                                                       and r["k"] == e["mlet_k"]]))


def test_controls_pair_by_seed(tiny_run):
    plan, out, _, _ = tiny_run
    res = json.load(open(os.path.join(out, "controls.json")))
    rows = store.read_rows(os.path.join(out, "runs.jsonl"))
    (e,) = res
    mlet = {r["seed"]: r["test_auc"] for r in rows if r["d"] == 2 and r["k"] == 4 and r["table_lr_mult"] == 1
            and abs(r["projection_std"] - 0.5) < 1e-9 and r["data"] == plan.data_tag()}
    best = {r["seed"]: r["test_auc"] for r in rows if r["d"] == 2 and r["k"] is None
            and r["table_lr_mult"] == e["best_mult"] and r["data"] == plan.data_tag()}
    diffs = [mlet[s] - best[s] for s in (0, 1)]
    assert e["mlet_minus_best"]["mean"] == pytest.approx(np.mean(diffs))
    assert e["mlet_minus_best"]["se"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(2))
    assert set(e["controls"]) == {"1.0", "4.0"}


def test_compression_sizes_and_svd(tiny_run):
    plan, out, _, _ = tiny_run
    res = json.load(open(os.path.join(out, "compression.json")))
    sizes = {(p["embedding"], p["hashed"], p["precision"], p["d"]): p["relative_size"] for p in res["sizes"]}
    assert sizes[("single", False, "fp32", 4)] == 4.0 and sizes[("single", False, "int8", 4)] == 1.0
    # two largest fields (200, 600) hashed to half: (4 + 30 + 100 + 300) / 834 of the rows
    assert sizes[("MLET k=4", True, "int8", 4)] == pytest.approx(1.0 * 434 / 834)
    t4 = {e["rank"]: e for e in res["table4"]}
    assert set(t4) == {2} and t4[2]["svd"] is not None and t4[2]["mlet"] is not None


def test_resume_skips_done_rows(tiny_run):
    plan, out, _, _ = tiny_run
    logs = []
    reproduce.run(plan, out, log=logs.append)
    assert not any(line.startswith("[") for line in logs)
    assert len(store.read_rows(os.path.join(out, "runs.jsonl"))) == 13


def test_frequency_definitions():
    ds = make_synthetic(0, n_train=3000, n_valid=0, n_test=500, vocab_sizes=(3, 50, 400))
    c = ds.id_counts
    ids = ds.test.ids
    ml = subsets.sample_frequency(ids, c, ds.schema, "mean_log")
    ref = np.mean([np.log1p(c[f][ids[:, f]]) for f in range(3)], axis=0)
    np.testing.assert_allclose(ml, ref)
    np.testing.assert_array_equal(subsets.sample_frequency(ids, c, ds.schema, "min"),
                                  np.min([c[f][ids[:, f]] for f in range(3)], axis=0))
    np.testing.assert_array_equal(subsets.sample_frequency(ids, c, ds.schema, "field:C3"), c[2][ids[:, 2]])
    a, b = subsets.subsets(ml, 0.1)
    assert len(a) == len(b) == 50 and ml[a].min() >= ml[b].max()
    with pytest.raises(ValueError, match="no field 'C9'"):
        subsets.sample_frequency(ids, c, ds.schema, "field:C9")


def _append_many(path, worker, n):
    for i in range(n):
        store.append_row(path, {"key": f"{worker}-{i}", "pad": "x" * (5000 + 37 * i)})


@pytest.mark.filterwarnings("ignore:os.fork")  # the children only append to a file; no JAX runs in them
def test_parallel_appends_give_valid_jsonl(tmp_path):
    path = str(tmp_path / "runs.jsonl")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = open(path).read().splitlines()
    assert len(lines) == 160
    assert {json.loads(ln)["key"] for ln in lines} == {f"{w}-{i}" for w in range(4) for i in range(40)}


def test_truncated_line_is_ignored_and_summaries(tmp_path):
    path = str(tmp_path / "runs.jsonl")
    rows = [{"key": f"k{i}", "model": "m", "d": d, "k": k, "seed": s, "table_lr_mult": 1.0, "projection_std": 0.5,
             "test_auc": 0.7 + 0.01 * d + (0.03 if k else 0) + 0.001 * s, "test_logloss": 0.5}
            for i, (d, k, s) in enumerate((d, k, s) for d in (2, 4, 8) for k in (None, 16) for s in (0, 1))]
    for r in rows:
        store.append_row(path, r)
    with open(path, "a") as f:
        f.write('{"key": "cut')
    assert len(store.read_rows(path)) == 12
    summ = sweep.summarize(store.read_rows(path))
    e = next(e for e in summ if e["d"] == 4 and e["k"] == 16)
    assert e["test_auc_mean"] == pytest.approx(0.7 + 0.04 + 0.03 + 0.0005) and e["n"] == 2
    sv = savings.savings(summ)
    # MLET d=2 (0.7505) beats single d=4 (0.7405); MLET d=4 (0.7705) does not reach single d=8 (0.7805)
    assert [(x["single_d"], x["mlet_d"], x["reduction"]) for x in sv] == [(2, None, None), (4, 2, 2.0), (8, None, None)]
    assert "| m | 4 | 16 | 2 |" in sweep.markdown(summ)
    assert report._v(0, 3) == "not reproduced" and report._v(3, 3) == "reproduced"


def test_controls_paired_helper():
    r = controls.paired({0: 0.8, 1: 0.9, 2: 0.85}, {0: 0.7, 1: 0.85, 2: 0.85})
    assert r["mean"] == pytest.approx(0.05) and r["n"] == 3
    assert r["se"] == pytest.approx(np.std([0.1, 0.05, 0.0], ddof=1) / np.sqrt(3))


def test_mean_std_is_the_sample_spread():
    x = [0.71, 0.74, 0.70, 0.735]
    m, s = common.mean_std(x)
    assert m == pytest.approx(statistics.mean(x), rel=1e-15) and s == pytest.approx(statistics.stdev(x), rel=1e-12)
    assert common.mean_std([0.7]) == (0.7, 0.0)


def test_data_options_parse_as_the_train_command_line(capsys, tmp_path):
    x = str(tmp_path / "x")
    _, plan, kw = common.parse_plan_cli("doc", ["--out", x, "--data-option", "vocab_sizes=[3,4]",
                                                "--data-option", "n-train=100", "--data-option", "name=abc"])
    assert dict(plan.data_options) == {"vocab_sizes": (3, 4), "n_train": 100, "name": "abc"}
    assert kw == {"shard": (0, 1), "train": True}
    with pytest.raises(SystemExit) as e:
        common.parse_plan_cli("doc", ["--out", str(tmp_path / "y"), "--data-option", "noequals"])
    assert e.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        common.parse_plan_cli("doc", ["--out", str(tmp_path / "y"), "--shard", "3/2"])
    assert not (tmp_path / "y").exists()  # a refused command line leaves nothing behind
