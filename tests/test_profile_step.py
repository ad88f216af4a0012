"""benchmarks/profile_step.py: the trace aggregation (hand-made trace) and a smoke run on tiny arrays."""

from __future__ import annotations

import gzip
import json

import pytest

from benchmarks import profile_step


def test_aggregate_sums_complete_events_per_step(tmp_path):
    d = tmp_path / "plugins" / "profile" / "run"
    d.mkdir(parents=True)
    events = [{"ph": "X", "name": "dot.1", "dur": 1500.0}, {"ph": "X", "name": "dot.1", "dur": 500.0},
              {"ph": "X", "name": "fusion.2", "dur": 3000.0}, {"ph": "M", "name": "thread_name"},
              {"ph": "X", "name": "fusion.2", "dur": 1000.0}, {"ph": "i", "name": "dot.1", "dur": 9e9}]
    with gzip.open(d / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    rows = profile_step.aggregate(str(tmp_path), steps=2)
    # (1500 + 500) us over 2 steps = 1.0 ms; (3000 + 1000) us = 2.0 ms; heaviest first; calls per step
    assert rows == [("fusion.2", 2.0, 1), ("dot.1", 1.0, 1)]
    with pytest.raises(FileNotFoundError, match="trace.json.gz"):
        profile_step.aggregate(str(tmp_path / "plugins" / "none"), steps=1)


def test_smoke_profile_names_xla_ops(capsys):
    shown = profile_step.main(["--smoke", "--model", "deepfm", "--batch", "64", "--steps", "2", "--top", "5"])
    assert 0 < len(shown) <= 5 and all(ms >= 0 for _, ms, _ in shown)
    assert "deepfm single batch 64:" in capsys.readouterr().out


def test_unknown_model_is_a_usage_error_naming_the_choices(capsys):
    import pytest

    from benchmarks import profile_step

    with pytest.raises(SystemExit) as e:
        profile_step.main(["--model", "NFMX", "--smoke"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --model: invalid choice: 'nfmx'" in err and "'nfm'" in err
