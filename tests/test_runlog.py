"""The run log: fit's JSON lines equal its History, complete lines after a crash, refusal of foreign files, resumes
resolved by step, and the CLI's log next to --out."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mlet_jax import runlog
from mlet_jax import train as train_cli
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import build_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer, fit

SMALL = dict(n_train=1500, n_valid=300, n_test=300, vocab_sizes=(7, 50, 300))


def _trainer(ds):
    model = build_model("dlrm", ds.schema, EmbeddingSpec("mlet", 4, 8), bottom_mlp=(8,), top_mlp=(8,))
    return Trainer(model, TrainConfig(OptimizerSpec("sgd", 0.2)))


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(0, **SMALL)


@pytest.fixture(scope="module")
def logged(ds, tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "run.log.jsonl"
    state, hist = fit(_trainer(ds), ds.train, batch_size=100, seed=0, valid=ds.valid, eval_every=6, progress=False,
                      log_every=4, run_log=path, log_meta={"note": "test"}, spectra_every=6)
    return path, state, hist


def test_fit_log_lines_are_the_history_records(logged):
    path, state, hist = logged
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines] == json.loads(json.dumps(hist.records))  # same records, same order
    assert runlog.read_records(path) == json.loads(json.dumps(hist.records))
    ev = [r["event"] for r in hist.records]
    assert ev[0] == "start" and ev[-1] == "end" and ev[1] == "spectra"  # the initial state's spectra first
    start = hist.records[0]
    assert start["format"] == runlog.FORMAT and start["meta"] == {"note": "test"} and start["step"] == 0
    assert start["steps_per_epoch"] == 15 and not start["resumed"]
    train = [r for r in hist.records if r["event"] == "train"]
    assert [r["step"] for r in train] == hist.steps == [4, 8, 12]
    assert [r["loss"] for r in train] == hist.losses
    assert [{k: v for k, v in r.items() if k != "event"} for r in hist.records if r["event"] == "eval"] == hist.evals
    assert [r["step"] for r in hist.evals] == [6, 12]
    assert [r["step"] for r in hist.spectra] == [0, 6, 12, 15]
    end = hist.records[-1]
    assert end["step"] == int(state.step) == 15 and end["train_samples"] == hist.train_samples == 14 * 100
    assert end["samples_per_s"] == pytest.approx(hist.samples_per_second, rel=1e-12)
    # each interval's throughput is its samples over its share of the training clock, so the intervals' seconds
    # (samples / samples_per_s) add up to at most the whole training time
    secs = [(r["step"] - prev) * 100 / r["samples_per_s"] for prev, r in zip([1, 4, 8], train, strict=True)]
    assert all(s > 0 for s in secs) and sum(secs) <= hist.train_seconds * (1 + 1e-9)


def test_a_crash_leaves_complete_lines_and_an_error_record(ds, tmp_path):
    path = tmp_path / "crash.jsonl"

    def crash(step, state):
        if step == 7:
            raise RuntimeError("boom at 7")

    with pytest.raises(RuntimeError, match="boom"):
        fit(_trainer(ds), ds.train, batch_size=100, seed=0, progress=False, log_every=2, run_log=path,
            callbacks=[crash])
    recs = runlog.read_records(path)
    assert path.read_text().endswith("\n")
    assert [r["step"] for r in recs if r["event"] == "train"] == [2, 4, 6]
    assert recs[-1] == {"event": "error", "step": 6, "error": "RuntimeError", "message": "boom at 7"}


def test_refuses_foreign_files_and_appends_to_its_own(tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("my notes\n")
    with pytest.raises(ValueError, match="not a run log written by mlet_jax"):
        runlog.RunLog(foreign)
    assert foreign.read_text() == "my notes\n"
    with pytest.raises(ValueError, match="does not exist"):
        runlog.check_target(tmp_path / "no" / "x.jsonl")
    with pytest.raises(ValueError, match="is a folder"):
        runlog.check_target(tmp_path)
    path = tmp_path / "r.jsonl"
    path.write_text("")  # an empty file may be taken
    with runlog.RunLog(path) as log:  # a run of 10 steps
        log.write(runlog.start_record(step=0, resumed=False))
        for s in (0, 4, 8, 10):
            if s:
                log.write({"event": "train", "step": s, "loss": 1.0 / s})
            log.write({"event": "spectra", "step": s, "fields": [], "mean_effective_rank": float(s)})
    with runlog.RunLog(path) as log:  # resumed from the checkpoint of step 4, then to step 12
        assert log.appended
        log.write(runlog.start_record(step=4, resumed=True))
        for s in (4, 8, 12):
            if s > 4:
                log.write({"event": "train", "step": s, "loss": 10.0 + s})
            log.write({"event": "spectra", "step": s, "fields": [], "mean_effective_rank": 100.0 + s})
    recs = runlog.read_records(path)
    assert [len(r) for r in runlog.runs(recs)] == [1 + 4 + 3, 1 + 3 + 2]
    c = runlog.curves(recs)
    assert [(r["step"], r["loss"]) for r in c["train"]] == [(4, 0.25), (8, 18.0), (12, 22.0)]
    assert [(r["step"], r["mean_effective_rank"]) for r in c["spectra"]] == [(0, 0.0), (4, 104.0), (8, 108.0),
                                                                             (12, 112.0)]
    assert [r["step"] for r in c["start"]] == [0, 4]


def test_bad_logs_name_file_and_line(tmp_path):
    good = json.dumps(runlog.start_record(step=0, resumed=False))
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + '{"event": "train", "step": 1}\n' + "{not json\n" + '{"event": "end", "step": 2}\n')
    with pytest.raises(runlog.RunLogError, match=r"bad.jsonl, line 3: not a JSON object"):
        runlog.read_records(path)
    path.write_text(good + "\n" + '{"event": "train"}\n')
    with pytest.raises(runlog.RunLogError, match=r"line 2: .*integer 'step'"):
        runlog.read_records(path)
    path.write_text('{"event": "train", "step": 1}\n')
    with pytest.raises(runlog.RunLogError, match=r"line 1: not a run log"):
        runlog.read_records(path)
    with pytest.raises(runlog.RunLogError, match=r"missing.jsonl: cannot read"):
        runlog.read_records(tmp_path / "missing.jsonl")
    # a run killed mid-write: the cut last line is skipped with a warning, the complete ones are kept
    path.write_text(good + "\n" + '{"event": "train", "step": 1}\n' + '{"event": "tra')
    with pytest.warns(UserWarning, match="line 3: skipping the cut last line"):
        assert [r["event"] for r in runlog.read_records(path)] == ["start", "train"]


def test_cli_writes_the_log_next_to_out(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["--embedding", "mlet", "--d", "4", "--k", "8", "--seed", "0", "--batch-size", "100",
            "--model-option", "bottom_mlp=[8]", "--model-option", "top_mlp=[8]", "--log-every", "3",
            "--spectra-every", "5", "--no-progress", "--out", str(out),
            *[f"--data-option={k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in SMALL.items()]]
    rec = train_cli.main(argv)
    log = tmp_path / "run.log.jsonl"
    assert rec["run_log"] == str(log) and json.loads(out.read_text())["run_log"] == str(log)
    recs = runlog.read_records(log)
    assert recs[0]["meta"]["settings"] == json.loads(json.dumps(rec["settings"]))
    assert recs[-1]["event"] == "test" and recs[-1]["auc"] == pytest.approx(rec["test_auc"], rel=1e-12)
    assert [r["step"] for r in recs if r["event"] == "train"] == [3, 6, 9, 12, 15]
    assert [r["step"] for r in rec["spectra"]] == [0, 5, 10, 15]
    assert rec["spectra"] == [r for r in recs if r["event"] == "spectra"]
    capsys.readouterr()
    # a foreign file at --log: a usage error before any training, and the file is untouched
    foreign = tmp_path / "mine.txt"
    foreign.write_text("keep me")
    for bad, msg in ((["--log", str(foreign)], "not a run log written by mlet_jax"),
                     (["--spectra-every", "0"], "--spectra-every must be >= 1"),
                     (["--log", str(tmp_path / "no" / "l.jsonl")], "does not exist"),
                     (["--out", str(out), "--log", str(out)], "--log and --out name the same file")):
        with pytest.raises(SystemExit) as e:
            train_cli.main(["--no-progress", *bad])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    assert foreign.read_text() == "keep me"


@pytest.mark.slow
def test_a_resumed_run_appends_and_its_curve_is_the_uninterrupted_one(ds, tmp_path):
    kw = dict(batch_size=100, seed=0, progress=False, log_every=2)
    _, full = fit(_trainer(ds), ds.train, **kw)  # the uninterrupted run: its losses are the reference

    def crash(step, state):
        if step == 8:
            raise KeyboardInterrupt

    path, ckpt = tmp_path / "run.log.jsonl", tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt), pytest.warns(match="training starts fresh"):
        fit(_trainer(ds), ds.train, **kw, checkpoint_dir=ckpt, checkpoint_every=5, run_log=path, callbacks=[crash])
    fit(_trainer(ds), ds.train, **kw, checkpoint_dir=ckpt, checkpoint_every=5, run_log=path)  # resumes at step 5
    recs = runlog.read_records(path)
    first, second = runlog.runs(recs)
    assert first[0]["step"] == 0 and first[-1]["event"] == "error" and first[-1]["error"] == "KeyboardInterrupt"
    assert second[0]["step"] == 5 and second[0]["resumed"] and second[-1]["event"] == "end"
    c = runlog.curves(recs)
    assert [r["step"] for r in c["train"]] == full.steps  # 2, 4, ..., 14: each step once, the resumed part wins
    np.testing.assert_allclose([r["loss"] for r in c["train"]], full.losses, rtol=1e-6)


@pytest.mark.slow
def test_kill_9_leaves_a_readable_log(tmp_path):
    path = tmp_path / "killed.jsonl"
    script = textwrap.dedent(f"""
        import os, signal
        from mlet_jax.data.synthetic import make_synthetic
        from mlet_jax.embeddings import EmbeddingSpec
        from mlet_jax.models import build_model
        from mlet_jax.optim import OptimizerSpec
        from mlet_jax.training import TrainConfig, Trainer, fit
        ds = make_synthetic(0, **{SMALL!r})
        tr = Trainer(build_model("dlrm", ds.schema, EmbeddingSpec("mlet", 4, 8), bottom_mlp=(8,), top_mlp=(8,)),
                     TrainConfig(OptimizerSpec("sgd", 0.2)))
        def kill(step, state):
            if step == 9:
                os.kill(os.getpid(), signal.SIGKILL)
        fit(tr, ds.train, batch_size=100, progress=False, log_every=2, spectra_every=3, run_log={str(path)!r},
            callbacks=[kill])
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    recs = runlog.read_records(path)
    assert path.read_text().endswith("\n")
    assert [r["step"] for r in recs if r["event"] == "train"] == [2, 4, 6, 8]
    assert [r["step"] for r in recs if r["event"] == "spectra"] == [0, 3, 6]  # step 9's callback was killed first
    assert np.all([r["event"] != "end" for r in recs])
