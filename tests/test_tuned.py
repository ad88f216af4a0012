"""experiments/tuned.py: the search is the same for every arm, selection never reads the test split, and the paired
statistics equal a numpy float64 computation. Slow: a tiny end-to-end run whose selection and differences are
recomputed from its own records."""

import json
import math

import numpy as np
import pytest

from experiments import tuned
from mlet_jax.models.presets import paper_embedding, paper_optimizer


def test_every_arm_gets_the_same_lr_draws_within_the_ranges():
    plan = tuned.TunedPlan(budget=12, search_seed=3)
    single, m16, m64 = (tuned.trials(plan, k) for k in (None, 16, 64))
    assert len(single) == len(m16) == len(m64) == 12
    lr0 = paper_optimizer("dlrm").lr
    assert single[0] == {"lr": lr0, "table_lr_mult": 1.0, "projection_std": None}
    assert m16[0]["projection_std"] == paper_embedding("dlrm", "mlet", 4, 16).projection_std
    for a, b, c in zip(single, m16, m64, strict=True):
        assert a["lr"] == b["lr"] == c["lr"] and a["table_lr_mult"] == b["table_lr_mult"] == c["table_lr_mult"]
        assert lr0 / 4 <= a["lr"] <= lr0 * 4 and 0.25 <= a["table_lr_mult"] <= 128
        assert a["projection_std"] is None and 0.05 <= b["projection_std"] <= 1.0
        assert b["projection_std"] == c["projection_std"]
    assert len({t["lr"] for t in single}) == 12  # distinct draws
    assert tuned.trials(tuned.TunedPlan(budget=12, search_seed=4), None) != single


def test_paired_statistics_and_verdict_against_numpy():
    rng = np.random.default_rng(0)
    a = {s: float(x) for s, x in enumerate(rng.normal(0.70, 0.01, 6))}
    b = {s: float(x) for s, x in enumerate(rng.normal(0.69, 0.01, 6))}
    b[7] = 0.5  # unpaired seed: ignored
    p = tuned.paired(a, b)
    d = np.array([a[s] - b[s] for s in range(6)], np.float64)
    assert p["n"] == 6
    np.testing.assert_allclose(p["mean"], d.mean(), rtol=1e-14)
    np.testing.assert_allclose(p["se"], np.sqrt(np.sum((d - d.mean()) ** 2) / 5) / np.sqrt(6), rtol=1e-12)
    assert tuned.verdict({"mean": 0.01, "se": 0.004}, "A", "B") == "A wins"
    assert tuned.verdict({"mean": -0.01, "se": 0.004}, "A", "B") == "B wins"
    assert tuned.verdict({"mean": 0.007, "se": 0.004}, "A", "B") == "tie"
    assert tuned.verdict({"mean": math.nan, "se": 0.1}, "A", "B") == "no data"


def test_selection_ignores_diverged_trials():
    rows = [{"valid_auc": 0.6}, {"valid_auc": math.nan}, {"valid_auc": 0.7}, {"valid_auc": None}]
    assert tuned.select(rows) == 2
    with pytest.raises(ValueError, match="diverged"):
        tuned.select([{"valid_auc": math.nan}, {"valid_auc": None}])


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    for argv, msg in ((["--seeds", "1"], "seeds must be >= 2"), (["--ks", "2", "--d", "4"], "every k >= d"),
                      (["--ks", "a,b"], "comma-separated"), (["--dataset", "movielens"], "--data-dir"),
                      (["--budget", "0"], "budget")):
        with pytest.raises(SystemExit) as e:
            tuned.main(["--out", str(tmp_path), *argv])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err
    foreign = tmp_path / "tuned.json"
    foreign.write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="not a tuned.py result"):
        tuned.run_tuned(tuned.TunedPlan(), str(tmp_path))
    assert json.loads(foreign.read_text()) == {"something": "else"}


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path):
    plan = tuned.TunedPlan(ks=(8,), budget=3, seeds=2, data_options=(("n_test", 1500), ("n_train", 2560),
                                                                        ("n_valid", 1000)),
                           model_options=(("bottom_mlp", (8,)), ("top_mlp", (8,))))
    res = tuned.run_tuned(plan, str(tmp_path), log=lambda *a: None)
    for name in ("single", "mlet_k8"):
        f = res["search"][name]
        aucs = [t["valid_auc"] for t in f["trials"]]
        assert f["winner"] == int(np.nanargmax(np.asarray(aucs, np.float64)))  # chosen on validation only
        assert res["final"][name]["settings"]["lr"] == f["trials"][f["winner"]]["lr"]
    a = {r["seed"]: r["test_auc"] for r in res["final"]["mlet_k8"]["runs"]}
    b = {r["seed"]: r["test_auc"] for r in res["final"]["single"]["runs"]}
    np.testing.assert_allclose(res["comparisons"][0]["auc_diff"]["mean"], np.mean([a[s] - b[s] for s in a]),
                               rtol=1e-12)
    # seed s of the final runs equals a lone run of that configuration (the seed orders the batches)
    from mlet_jax.train import run

    cfg = tuned.config(plan, 8, res["final"]["mlet_k8"]["settings"], 1)
    np.testing.assert_allclose(run(cfg)["test_auc"], a[1], rtol=1e-6)
    assert (tmp_path / "tuned.md").exists() and (tmp_path / "fig_tuned.png").stat().st_size < 1_000_000
    assert tuned.run_tuned(plan, str(tmp_path), log=lambda *a: None)["seconds"] == res["seconds"]  # reused
