"""The demo end to end at toy size: files written, summary consistent with the per-run rows."""

import json

import numpy as np

from mlet_jax import demo


def test_demo_tiny(tmp_path, capsys):
    rc = demo.main(["--out", str(tmp_path), "--seeds", "2", "--d", "2", "--n-train", "3000", "--k", "8",
                    "--control-mults", "4"])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "auc_vs_d.png").stat().st_size > 10_000
    rows, (summ,) = res["rows"], res["summary"]
    assert len(rows) == 3 * 2
    for name in ("single", "mlet_k8", "single_lr_x4"):
        aucs = [r["test_auc"] for r in rows if r["variant"] == name]
        assert summ[f"{name}/test_auc/mean"] == np.mean(aucs)
        assert summ[f"{name}/test_auc/std"] == np.std(aucs, ddof=1)
    assert summ["mlet_gain_auc"] == summ["mlet_k8/test_auc/mean"] - summ["single/test_auc/mean"]
    assert res["collapse_max_abs_diff"] <= 1e-5
    out = capsys.readouterr().out
    assert "MLET - best control" in out and "OK" in out
