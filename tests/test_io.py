"""Writers never overwrite or delete what mlet_jax did not write (mlet_jax.io), and the CLIs follow that rule."""

from __future__ import annotations

import json

import pytest

from experiments.common import parse_plan_cli
from mlet_jax import demo, io
from mlet_jax import train as train_cli


def test_is_ours_reads_the_format_tag(tmp_path):
    cases = {
        "ours.json": json.dumps({"format": "mlet_jax.train.result/1", "auc": 0.7}),
        "ours_indented.json": json.dumps({"format": "mlet_jax.x/1", "a": [1, 2]}, indent=1),
        "ours.jsonl": "".join(json.dumps({"format": "mlet_jax.multirun/1", "seed": s}) + "\n" for s in range(3)),
        "foreign.json": json.dumps({"auc": 0.7}),
        "foreign_tag.json": json.dumps({"format": "other/1"}),
        "list.json": "[1, 2]",
        "notes.txt": "my notes\n",
        "empty.json": "",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    got = {name: io.is_ours(tmp_path / name) for name in cases}
    assert got == {n: n.startswith("ours") for n in cases}
    assert not io.is_ours(tmp_path / "missing.json")


def test_check_output_file(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps({"format": "mlet_jax.train.result/1"}))
    (tmp_path / "theirs.json").write_text('{"keep": true}')
    assert io.check_output_file(tmp_path / "new.json") == tmp_path / "new.json"
    io.check_output_file(tmp_path / "mine.json")
    with pytest.raises(io.OutputExistsError, match="theirs.json.*not written by mlet_jax"):
        io.check_output_file(tmp_path / "theirs.json", "--out")
    with pytest.raises(ValueError, match="is a folder"):
        io.check_output_file(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        io.check_output_file(tmp_path / "no" / "x.json")
    assert (tmp_path / "theirs.json").read_text() == '{"keep": true}'


def test_write_json_output_tags_and_refuses_foreign(tmp_path):
    out = tmp_path / "r.jsonl"
    io.write_json_output(out, [{"seed": 0}, {"seed": 1}], "mlet_jax.test/1")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"format": "mlet_jax.test/1", "seed": 0}, {"format": "mlet_jax.test/1", "seed": 1}]
    io.write_json_output(out, {"seed": 2}, "mlet_jax.test/1")  # ours: replaced
    assert json.loads(out.read_text())["seed"] == 2
    (tmp_path / "x.json").write_text("hand-made")
    with pytest.raises(io.OutputExistsError):
        io.write_json_output(tmp_path / "x.json", {"a": 1}, "mlet_jax.test/1")
    assert (tmp_path / "x.json").read_text() == "hand-made"
    with pytest.raises(ValueError, match="format tags start with"):
        io.write_json_output(tmp_path / "y.json", {"a": 1}, "other/1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "x.json"]  # no temporary file left


def test_output_folders(tmp_path):
    io.check_output_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    io.check_output_dir(tmp_path / "empty")
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(io.OutputExistsError, match="did not write"):
        io.check_output_dir(users)
    with pytest.raises(io.OutputExistsError):
        io.claim_output_dir(users)
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    ours = io.claim_output_dir(tmp_path / "a" / "b")
    (ours / "results.json").write_text("{}")
    io.claim_output_dir(ours)  # a folder we marked may be written again
    with pytest.raises(ValueError, match="is a file"):
        io.check_output_dir(users / "notes.txt")
    old = tmp_path / "old_run"  # written by a version before the marker: only the writer's own file names
    old.mkdir()
    (old / "results.json").write_text("{}")
    io.check_output_dir(old, writes=("results.json", "plot.png"))
    with pytest.raises(io.OutputExistsError):
        io.check_output_dir(users, writes=("results.json",))


def test_train_cli_never_overwrites_a_foreign_out(tmp_path, capsys):
    out = tmp_path / "results.json"
    out.write_text("a user's file\n")
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(out), "--no-progress"])
    assert e.value.code == 2 and "not written by mlet_jax" in capsys.readouterr().err
    assert out.read_text() == "a user's file\n"


def test_demo_never_writes_into_a_users_folder(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("chapter 1")
    with pytest.raises(SystemExit) as e:
        demo.main(["--out", str(tmp_path)])
    assert e.value.code == 2 and "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_experiments_write_only_into_their_own_folders(tmp_path, capsys):
    users = tmp_path / "users"
    users.mkdir()
    (users / "report.md").write_text("my report")
    with pytest.raises(SystemExit) as e:
        parse_plan_cli("x", ["--quick", "--out", str(users)])
    assert e.value.code == 2 and "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in users.iterdir()) == ["report.md"]
    earlier = tmp_path / "earlier"  # an experiment's folder from before the marker: it holds runs.jsonl
    earlier.mkdir()
    (earlier / "runs.jsonl").write_text("")
    (earlier / "report.md").write_text("")
    a, _, _ = parse_plan_cli("x", ["--quick", "--out", str(earlier)])
    assert (earlier / io.OUTPUT_MARKER).exists()
    a, _, _ = parse_plan_cli("x", ["--quick", "--out", str(tmp_path / "new")])
    assert (tmp_path / "new" / io.OUTPUT_MARKER).exists()
