"""Fault suite of ``prepare`` (issue 14): one case per fault class; the table is docs/faults_data.md.

Each case checks what the user sees (exception type and message, or exit status and the one stderr line) and an
independent fact: the bytes of the files that existed before, the values written by hand into the input.
"""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import polars as pl
import pytest

from mlet_jax.data import DataFormatError, load_dataset, prepare
from mlet_jax.data.__main__ import main

OPTS = {"label": "y", "categorical": ["c"], "numeric": ["x"]}
CLI_OPTS = ["--label", "y", "--categorical", "c", "--numeric", "x", "--no-progress"]


def table(path, n=40, c=None, x=None, y=None):
    """A CSV whose labels alternate (both classes in any split of a few rows)."""
    c = c if c is not None else [f"k{i % 3}" for i in range(n)]
    x = x if x is not None else [str(i) for i in range(n)]
    y = y if y is not None else [str(i % 2) for i in range(n)]
    path.write_text("y,c,x\n" + "".join(f"{a},{b},{v}\n" for a, b, v in zip(y, c, x, strict=True)))
    return str(path)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def tree(root):
    """Every file under ``root`` with its content hash."""
    return {os.path.relpath(os.path.join(d, f), root): digest(os.path.join(d, f))
            for d, _, fs in os.walk(root) for f in fs}


def run_cli(capsys, *args):
    rc = main(["prepare", *args])
    err = capsys.readouterr().err
    return rc, err


def ml100k(d, ratings):
    d.mkdir(exist_ok=True)
    (d / "u.data").write_text("\n".join(ratings) + "\n")
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (d / "u.item").write_text("1|A (1995)|01-Jan-1995||u|" + "|".join(["0"] * 18 + ["1"]) + "\n"
                              "2|B (1996)|01-Jan-1996||u|" + "|".join(["1"] + ["0"] * 18) + "\n")
    return str(d)


def ml_ratings(n=20):
    return [f"{1 + i % 2}\t{1 + (i // 2) % 2}\t{1 + (i % 5)}\t{880000000 + i}" for i in range(n)]


# --- writers never delete what they did not write -------------------------------------------------------------

def test_out_folder_with_user_files_is_refused(tmp_path, capsys):
    src = table(tmp_path / "t.csv")
    mydir = tmp_path / "mydir"
    mydir.mkdir()
    (mydir / "notes.txt").write_text("x")
    before = tree(tmp_path)
    rc, err = run_cli(capsys, "table", "--input", src, "--out", str(mydir), *CLI_OPTS)
    assert rc == 2 and err.count("\n") == 1
    assert "argument --out:" in err and "not a mlet_jax cache" in err and "notes.txt" in err
    assert tree(tmp_path) == before  # nothing deleted, nothing added (no temp folder either)


@pytest.mark.parametrize("where", ["input_file", "parent_of_input", "inside_input_folder", "input_folder"])
def test_out_overlapping_an_input_is_refused(tmp_path, where):
    if where in ("input_file", "parent_of_input"):
        src = table(tmp_path / "t.csv")
        out = src if where == "input_file" else str(tmp_path)
        name, kw = "table", OPTS
    else:
        src = ml100k(tmp_path / "ml", ml_ratings())
        out = os.path.join(src, "cache") if where == "inside_input_folder" else src
        name, kw = "movielens", {}
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"out .*(is the input|contains the input|lies inside the input)"):
        prepare(name, src, out, **kw)
    assert tree(tmp_path) == before


def test_out_cache_holding_a_foreign_file_is_refused_and_own_cache_is_replaced(tmp_path):
    src = table(tmp_path / "t.csv")
    out = tmp_path / "cache"
    prepare("table", src, str(out), **OPTS)
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"also holds mine.txt, which prepare did not write"):
        prepare("table", src, str(out), min_count=2, **OPTS)
    assert (out / "mine.txt").read_text() == "keep me"
    os.remove(out / "mine.txt")
    ds = prepare("table", src, str(out), min_count=2, **OPTS)  # our own cache: rebuilt in place
    assert ds.meta["options"]["min_count"] == 2 and sorted(os.listdir(tmp_path)) == ["cache", "t.csv"]
    (tmp_path / "empty").mkdir()
    assert len(prepare("table", src, str(tmp_path / "empty"), **OPTS).train) == 36  # an empty folder is fine


def test_out_under_a_file_is_refused_before_reading(tmp_path):
    src = table(tmp_path / "t.csv")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"out .*afile.* is a file"):
        prepare("table", src, str(tmp_path / "afile" / "cache"), **OPTS)
    assert (tmp_path / "afile").read_text() == "x"


# --- validate first -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,needle", [
    ("--test-fraction", "0", "must be in (0, 1)"),
    ("--test-fraction", "1", "must be in (0, 1)"),
    ("--valid-fraction", "0.95", "test_fraction + valid_fraction must be < 1"),
    ("--label-threshold", "nan", "must be a finite number"),
    ("--seed", "-1", "must be an integer >= 0"),
    ("--min-count", "0", "must be an integer >= 1"),
    ("--hash-buckets", "0", "must be an integer >= 1"),
    ("--separator", ";;", "must be one character"),
    ("--encoding", "klingon", "must be a text encoding"),
])
def test_cli_option_errors_are_one_line_usage_errors(tmp_path, capsys, flag, value, needle):
    src = table(tmp_path / "t.csv")
    rc, err = run_cli(capsys, "table", "--input", src, "--out", str(tmp_path / "out"), *CLI_OPTS, flag, value)
    assert rc == 2 and err.count("\n") == 1 and f"argument {flag}: " in err and needle in err
    assert sorted(os.listdir(tmp_path)) == ["t.csv"]


def test_api_option_errors_name_the_argument(tmp_path):
    src = table(tmp_path / "t.csv")
    with pytest.raises(ValueError, match=r"^test_fraction must be in \(0, 1\).*got 0$"):
        prepare("table", src, str(tmp_path / "o"), test_fraction=0, **OPTS)
    with pytest.raises(ValueError, match=r"^label_threshold must be a finite number.*got nan$"):
        prepare("table", src, str(tmp_path / "o"), label_threshold=float("nan"), **OPTS)
    ml = ml100k(tmp_path / "ml", ml_ratings())
    with pytest.raises(ValueError, match=r"^label_threshold must be a finite number"):
        prepare("movielens", ml, str(tmp_path / "o"), label_threshold=float("nan"))
    assert sorted(os.listdir(tmp_path)) == ["ml", "t.csv"]


def test_empty_test_split_is_refused_at_prepare_time(tmp_path, capsys):
    lines = ["\t".join([str(i % 2)] + ["1"] * 13 + ["0000000a"] * 26) for i in range(45)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    rc, err = run_cli(capsys, "criteo", "--input", str(tmp_path / "train.txt"), "--out", str(tmp_path / "out"),
                      "--days", "1000", "--no-progress")
    assert rc == 2 and err.count("\n") == 1
    assert "argument --days: days=1000 leaves the test split empty (45 rows were parsed); accepted: 2 <= days " \
           "<= 45" in err
    src = table(tmp_path / "t.csv", n=10)
    with pytest.raises(ValueError, match=r"test_fraction=0.01 leaves the test split empty \(10 rows"):
        prepare("table", src, str(tmp_path / "o"), test_fraction=0.01, **OPTS)
    assert sorted(os.listdir(tmp_path)) == ["t.csv", "train.txt"]


def test_single_class_labels_are_refused_at_prepare_time(tmp_path, capsys):
    src = table(tmp_path / "t.csv", y=["0"] * 40)
    with pytest.raises(DataFormatError, match=r"t.csv: the train split's 36 labels are all 0; .*both classes"):
        prepare("table", src, str(tmp_path / "o"), **OPTS)
    src = table(tmp_path / "t.csv", y=[str(i % 5) for i in range(40)])
    rc, err = run_cli(capsys, "table", "--input", src, "--out", str(tmp_path / "o"), *CLI_OPTS,
                      "--label-threshold", "10")
    assert rc == 1 and err.count("\n") == 1 and "labels are all 0" in err and "label_threshold=10" in err
    assert sorted(os.listdir(tmp_path)) == ["t.csv"]


# --- data semantics -----------------------------------------------------------------------------------------

def test_missing_strings_are_an_option(tmp_path):
    words = ["NA", "null", "N/A", "nan", "", "k"]
    cats = [words[i % len(words)] for i in range(48)]
    src = table(tmp_path / "t.csv", n=48, c=cats)
    ds = prepare("table", src, str(tmp_path / "a"), vocab_split="all", **OPTS)
    # default: only the empty field is missing; the four strings are categories of their own (+ missing + OOV)
    assert ds.schema.vocab_sizes == (len(words) + 1,)
    na = prepare("table", src, str(tmp_path / "b"), vocab_split="all", missing_values=["NA", "null"], **OPTS)
    assert na.schema.vocab_sizes == (len(words) - 2 + 1,)
    ids = np.concatenate([na.train.ids[:, 0], na.test.ids[:, 0]])
    train_rows = np.flatnonzero(np.isin(np.concatenate([na.train.dense[:, 0], na.test.dense[:, 0]]),
                                        [i for i in range(48) if cats[i] in ("NA", "null", "")]))
    assert len(np.unique(ids[train_rows])) == 1  # NA, null and the empty field are one value: missing


def test_numeric_nan_is_an_error_unless_imputed(tmp_path):
    x = [str(i) for i in range(40)]
    x[7] = "nan"
    src = table(tmp_path / "t.csv", x=x)
    with pytest.raises(DataFormatError, match=r"t.csv, row 8, column 'x': 'nan' is NaN \(impute_nan"):
        prepare("table", src, str(tmp_path / "o"), **OPTS)
    ds = prepare("table", src, str(tmp_path / "o"), impute_nan=-5.0, split="sequential", **OPTS)
    expect = np.arange(40, dtype=np.float32)
    expect[7] = -5
    np.testing.assert_array_equal(np.concatenate([ds.train.dense[:, 0], ds.test.dense[:, 0]]), expect)
    x[7] = "inf"
    with pytest.raises(DataFormatError, match=r"row 8, column 'x': 'inf' is not a finite number"):
        prepare("table", table(tmp_path / "t.csv", x=x), str(tmp_path / "o2"), impute_nan=0.0, **OPTS)
    df = pl.DataFrame({"y": np.arange(40) % 2, "c": ["a"] * 40, "x": np.where(np.arange(40) == 3, np.nan, 1.0)})
    df.write_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataFormatError, match=r"t.parquet, row 4, column 'x': .* is NaN"):
        prepare("table", str(tmp_path / "t.parquet"), str(tmp_path / "o3"), **OPTS)


@pytest.mark.parametrize("rating", ["nan", "inf", "-1", "99", "0"])
def test_movielens_ratings_off_the_scale_are_rejected(tmp_path, rating):
    ratings = ml_ratings()
    ratings[4] = ratings[4].split("\t")[0] + "\t1\t" + rating + "\t880000004"
    d = ml100k(tmp_path / "ml", ratings)
    with pytest.raises(DataFormatError, match=rf"u.data, line 5, column 'rating': rating '{rating}' is outside "
                                              r"the MovieLens scale \[1, 5\]"):
        prepare("movielens", d, str(tmp_path / "o"))
    ds = prepare("movielens", d, str(tmp_path / "o"), on_bad_row="skip", split="timestamp", test_fraction=0.2)
    assert ds.meta["skipped_rows"] == 1 and ds.meta["rows"] == 19


def test_cache_notices_a_changed_input_of_the_same_size_and_mtime(tmp_path):
    y = [str(i % 2) for i in range(40)]
    src = table(tmp_path / "t.csv", y=y)
    out = str(tmp_path / "cache")
    a = prepare("table", src, out, split="sequential", **OPTS)
    assert a.test.label.tolist() == [0, 1, 0, 1]
    st = os.stat(src)
    table(tmp_path / "t.csv", y=y[:36] + ["1", "1", "0", "0"])  # same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime (cp -p, rsync -t, touch -r)
    assert os.stat(src).st_size == st.st_size and os.stat(src).st_mtime_ns == st.st_mtime_ns
    with pytest.raises(ValueError, match=r"t.csv changed content .* since this cache was prepared"):
        load_dataset("table", out)  # the prepared cache opened directly refuses
    with pytest.warns(UserWarning, match=r"rebuilding the cache: input .*t.csv changed content"):
        b = prepare("table", src, out, split="sequential", **OPTS)
    assert b.test.label.tolist() == [1, 1, 0, 0]
    assert load_dataset("table", out).test.label.tolist() == [1, 1, 0, 0]


# --- interrupted writes -------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, time
    import mlet_jax.data.table as t
    from mlet_jax.data import prepare

    flag, src, out = sys.argv[1:4]
    real = t.finalize

    def slow(*a, **k):  # every array written, schema.json not yet: the most valid-looking moment to die
        r = real(*a, **k)
        open(flag, "w").close()
        time.sleep(60)
        return r

    t.finalize = slow
    prepare("table", src, out, label="y", categorical=["c"], numeric=["x"], min_count=2)
""")


def _start_and_wait(tmp_path, src, out):
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(flag), src, out], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the child never reached the write"
        time.sleep(0.02)
    return proc


def _valid_caches(root):
    from mlet_jax.data.cache import read_meta

    return sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root) if read_meta(d) is not None)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_prepare_leaves_nothing_half_written_and_loses_nothing(tmp_path, sig):
    src = table(tmp_path / "t.csv")
    out = str(tmp_path / "cache")
    good = prepare("table", src, out, **OPTS)
    # a folder of a user's that merely looks like a temporary name, of a process that is gone
    lookalike = tmp_path / "cache.tmp-999999-0"
    lookalike.mkdir()
    (lookalike / "data.bin").write_text("mine")
    before = tree(tmp_path)
    proc = _start_and_wait(tmp_path, src, out)
    temps = [p for p in os.listdir(tmp_path) if p.startswith("cache.tmp-") and p != lookalike.name]
    assert len(temps) == 1  # the child is writing here, not in the cache
    proc.send_signal(sig)
    rc = proc.wait(30)
    os.remove(tmp_path / "flag")
    assert rc != 0
    assert tree(tmp_path).items() >= before.items()  # every file that existed is there, unchanged
    assert _valid_caches(tmp_path) == ["cache"]  # the half-written build does not look like a cache
    np.testing.assert_array_equal(load_dataset("table", out).train.ids, good.train.ids)
    left = [p for p in os.listdir(tmp_path) if p.startswith("cache.tmp-") and p != lookalike.name]
    assert left == (temps if sig == signal.SIGKILL else [])  # SIGTERM / SIGINT clean up at once
    ds = prepare("table", src, out, min_count=2, **OPTS)  # the next run removes what the killed one left
    assert ds.meta["options"]["min_count"] == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["cache", "t.csv", lookalike.name])
    assert (lookalike / "data.bin").read_text() == "mine"
