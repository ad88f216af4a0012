"""The README's Python example runs as written, and the Makefile carries the README's two commands."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["logits"].shape == (5_000,)
    # the collapsed model's logits equal the trained MLET model's (float32)
    import numpy as np

    trained = ns["trainer"].predict(ns["state"].params, ns["ds"].test)
    assert np.abs(np.asarray(ns["logits"]) - trained).max() <= 1e-5
    assert "auc" in capsys.readouterr().out


def test_makefile_targets_match_readme():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
