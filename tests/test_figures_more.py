"""experiments/figures_more.py: one PNG per results file present (under 1 MB), none for missing or empty ones."""

import json
import os

from experiments import figures_more


def test_pngs_for_present_results_only(tmp_path):
    out = str(tmp_path)
    sv = {"entries": [{"model": "dcn", "single_d": 2, "single": 0.72, "mlet_d": None, "mlet_k": None, "mlet": None,
                       "reduction": None},
                      {"model": "dcn", "single_d": 4, "single": 0.73, "mlet_d": 2, "mlet_k": 64, "mlet": 0.731,
                       "reduction": 2.0}], "headline": {}}
    ct = [{"model": "dlrm", "d": 4, "k": 64, "optimizer": "sgd", "k_std2": 4.0, "mlet": 0.66,
           "controls": {"1.0": 0.63, "8.0": 0.68}}]
    for name, res in (("savings.json", sv), ("controls.json", ct), ("frequency.json", {"mean_log": []})):
        with open(os.path.join(out, name), "w") as f:
            json.dump(res, f)
    logs = []
    paths = figures_more.run(None, out, log=logs.append)
    assert sorted(os.path.basename(p) for p in paths) == ["fig_controls.png", "fig_savings.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert 1000 < os.path.getsize(p) < 1_000_000
    assert logs == ["figures_more: no frequency.json; fig_frequency.png skipped"]
