"""``python -m theory``: the table, the JSON report, the optimizer lines and the exit status."""

import json

import pytest

from theory import __main__ as cli
from theory import checks


def test_report_passes_and_writes_json(tmp_path, capsys):
    path = tmp_path / "report.json"
    assert cli.main(["--n", "100", "--d", "6", "--k", "12", "--seed", "1", "--no-dlrm", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("PASS") >= 20
    for name in ("sgd lr=", "adagrad (torch)", "adam (optax"):
        assert name in out
    report = json.loads(path.read_text())
    assert report["passed"] is True and report["args"]["n"] == 100
    assert len(report["checks"]) == out.count("PASS")
    thin = [c for c in report["checks"] if c["claim"].startswith("Eq. 13 = Eq. 6, thin")]
    assert len(thin) == 3 and all(c["measured"] <= 1e-10 for c in thin)
    assert [o["optimizer"] for o in report["optimizers"]][:2] == ["sgd", "adagrad (torch)"]
    assert abs(report["optimizers"][0]["median_ratio"] - 1) < 1e-3


def test_a_failing_check_exits_nonzero(monkeypatch, capsys):
    real = checks.run_random

    def with_a_failure(**kw):
        return real(**kw) + [checks.Check("planted failure", 1.0, "<= 1e-10", False)]

    monkeypatch.setattr(checks, "run_random", with_a_failure)
    assert cli.main(["--n", "100", "--d", "6", "--k", "12", "--seed", "1", "--no-dlrm"]) == 1  # same shapes: cached
    out = capsys.readouterr().out
    assert "planted failure" in out and "FAIL" in out


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        cli.main(["--n", "0"])


def test_public_api_and_mlet_jax_never_imports_theory():
    import pathlib

    import theory

    for name in ("svd_factors", "enhancement_factors", "first_order_update", "spectral_update", "two_layer_sgd_step",
                 "single_layer_sgd_step", "count_nonzero_enhancement_factors", "from_params", "measured_enhancement"):
        assert callable(getattr(theory, name)), name
    root = pathlib.Path(__file__).resolve().parents[1] / "mlet_jax"
    offenders = [str(p) for p in root.rglob("*.py") for line in p.read_text().splitlines()
                 if line.lstrip().startswith(("import theory", "from theory"))]
    assert offenders == []
