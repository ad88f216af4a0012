"""python -m mlet_jax.plot: a valid PNG of plausible size from tiny run logs; bad input is a usage error naming the
file (and line); a foreign file at --out is never overwritten."""

import json

import numpy as np
import pytest
from PIL import Image

from mlet_jax import plot, runlog
from mlet_jax.spectra import spectrum_stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_log(path, *, spectra=True, seed=0):
    rng = np.random.default_rng(seed)
    with runlog.RunLog(path) as log:
        log.write(runlog.start_record(step=0, resumed=False, batch_size=8))
        for step in range(0, 41, 4):
            if step:
                log.write({"event": "train", "step": step, "epoch": 0, "loss": 0.7 - 0.005 * step + 0.01 * rng.random(),
                           "samples_per_s": 1000.0 + step, "elapsed_s": step / 10})
            if step and step % 8 == 0:
                log.write({"event": "eval", "step": step, "auc": 0.6 + step / 400, "logloss": 0.5, "pr_auc": 0.3})
            if spectra and step % 20 == 0:
                fields = []
                for f, rows in enumerate((5, 30)):
                    s = np.sort(rng.random(4))[::-1] * (1 + step)
                    fields.append({"field": f, "name": str(f), "rows": rows, **spectrum_stats(s)})
                log.write({"event": "spectra", "step": step, "fields": fields,
                           "mean_effective_rank": np.mean([f["effective_rank"] for f in fields]),
                           "mean_information_abundance": np.mean([f["information_abundance"] for f in fields])})
        log.write({"event": "end", "step": 40})
        log.write({"event": "test", "step": 40, "auc": 0.71, "logloss": 0.5, "pr_auc": 0.3})


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 10_000 < len(data) < 1_000_000  # drawn curves, well under the 1 MB limit
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 800 and im.height >= 300
        assert im.info.get("Software") == plot.SOFTWARE
        return im.size, np.asarray(im.convert("L"))


def test_plot_two_runs_with_spectra(tmp_path, capsys):
    a, b = tmp_path / "single.log.jsonl", tmp_path / "mlet.log.jsonl"
    _write_log(a, seed=0)
    _write_log(b, seed=1)
    out = tmp_path / "curves.png"
    assert plot.main([str(a), str(b), "--out", str(out)]) == str(out)
    size, pixels = _check_png(out)
    assert size[1] > 600  # two rows of panels: curves and spectra
    assert pixels.std() > 10  # not a blank canvas
    # no spectra: one row; rerunning over its own PNG is allowed
    c = tmp_path / "plain.log.jsonl"
    _write_log(c, spectra=False)
    plot.main([str(c), "--out", str(out), "--label", "plain"])
    size1, _ = _check_png(out)
    assert size1[1] < size[1]


def test_bad_input_is_a_usage_error_naming_the_file(tmp_path, capsys):
    good = tmp_path / "good.log.jsonl"
    _write_log(good)
    bad = tmp_path / "bad.log.jsonl"
    lines = good.read_text().splitlines()
    bad.write_text("\n".join([*lines[:2], "{oops", *lines[2:]]) + "\n")
    foreign = tmp_path / "photo.png"
    foreign.write_bytes(PNG_MAGIC + b"someone else's")
    out = str(tmp_path / "o.png")
    cases = [
        ([str(tmp_path / "missing.log.jsonl"), "--out", out], "missing.log.jsonl: cannot read"),
        ([str(good), str(bad), "--out", out], "bad.log.jsonl, line 3: not a JSON object"),
        ([str(good), "--out", str(foreign)], "was not written by mlet_jax.plot"),
        ([str(good), "--out", str(tmp_path / "o.jpg")], "must end with .png"),
        ([str(good), "--out", str(tmp_path / "nodir" / "o.png")], "does not exist"),
        ([str(good), "--out", out, "--label", "a", "--label", "b"], "2 labels for 1 run logs"),
        ([str(good), "--out", out, "--field", "5"], "--field 5"),
    ]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as e:
            plot.main(argv)
        assert e.value.code == 2
        assert msg in capsys.readouterr().err, argv
    assert foreign.read_bytes() == PNG_MAGIC + b"someone else's"
    assert not (tmp_path / "o.png").exists()
    assert json.loads(good.read_text().splitlines()[0])["format"] == runlog.FORMAT
