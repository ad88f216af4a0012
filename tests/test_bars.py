"""BARS protocols (mlet_jax.data.bars) against FuxiCTR's own preprocessing.

``tests/fixtures/bars`` holds small generated files in BARS's published x4 format and what FuxiCTR 2.3.7's
``build_dataset`` made of them with BARS's dataset configs (``experiments/parity_fuxictr.py`` regenerates both).
The default tests compare our cache with those recorded outputs; ``test_live_fuxictr`` runs FuxiCTR itself when
``MLET_FUXICTR_PYTHON`` names an interpreter that has it.
"""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlet_jax.data import bars
from mlet_jax.data.__main__ import main as data_main
from mlet_jax.data._build import string_keys
from mlet_jax.data.errors import BadRows, DataFormatError
from mlet_jax.data.options import OptionError
from mlet_jax.data.registry import load_dataset, prepare

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "bars"


def _keys(proto: bars.Protocol, field: str, tokens) -> np.ndarray:
    """Our key of each FuxiCTR token (a string in its feature_vocab.json)."""
    if field in proto.string_fields:
        return string_keys(pl.Series(list(tokens), dtype=pl.String))
    return np.asarray([int(float(t)) for t in tokens], np.int64)


def assert_same_as_fuxictr(ds, proto: bars.Protocol, rec) -> None:
    """Same fields, vocabularies, OOV mapping and id of every value of every split as FuxiCTR's ``rec``, up to
    FuxiCTR's layout (padding 0, OOV last) and the order of tokens of equal training count."""
    assert tuple(rec["fields"]) == ds.schema.field_names == proto.fields
    assert ds.schema.num_dense == 0
    vocab = np.load(os.path.join(ds.meta["cache_dir"], "vocab.npz"))
    fx_train = rec["ids/train"]
    for j, f in enumerate(proto.fields):
        toks, fx_ids, fx_oov = rec[f"vocab_tokens/{f}"], rec[f"vocab_ids/{f}"], int(rec[f"oov_id/{f}"])
        n = len(toks)
        assert ds.schema.vocab_sizes[j] == n + 1 and fx_oov == n + 1, f  # ours: OOV + n; FuxiCTR: PAD + n + OOV
        np.testing.assert_array_equal(np.sort(fx_ids), np.arange(1, n + 1))
        ours = vocab[f]
        ours_of_key = {int(k): i + 1 for i, k in enumerate(ours)}
        keys = _keys(proto, f, toks)
        assert sorted(ours_of_key) == sorted(keys.tolist()), f
        to_ours = np.zeros(n + 2, np.int64)      # FuxiCTR id -> our id; padding (never used) and OOV -> 0
        to_ours[fx_ids] = [ours_of_key[int(k)] for k in keys]
        for split in ("train", "valid", "test"):
            got = np.asarray(getattr(ds, split).ids[:, j])
            np.testing.assert_array_equal(got, to_ours[rec[f"ids/{split}"][:, j]], err_msg=f"{split} {f}")
        # ids follow decreasing training count in both; they may differ only among tokens of equal count
        fx_count = np.bincount(fx_train[:, j], minlength=n + 2)
        ours_count = np.bincount(np.asarray(ds.train.ids[:, j]), minlength=n + 1)
        np.testing.assert_array_equal(ours_count[to_ours[fx_ids]], fx_count[fx_ids])
        assert np.all(np.diff(ours_count[1:]) <= 0), f
        np.testing.assert_array_equal(ds.id_counts[j], ours_count)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(np.asarray(getattr(ds, split).label), rec[f"label/{split}"])


@pytest.mark.parametrize("protocol", list(bars.PROTOCOLS))
def test_matches_recorded_fuxictr(protocol, tmp_path):
    proto = bars.PROTOCOLS[protocol]
    ds = prepare("bars", str(FIX / proto.dataset), str(tmp_path / "c"), protocol=protocol)
    rec = np.load(FIX / f"fuxictr_{protocol}.npz")
    assert_same_as_fuxictr(ds, proto, rec)
    assert ds.meta["protocol"] == protocol and ds.meta["embedding_dim"] == proto.embedding_dim
    assert ds.meta["splits"] == {"train": 600, "valid": 100, "test": 100}
    # the fixtures exercise what the protocol is about: rare tokens and unseen ones share the OOV row
    oov = sum(int((np.asarray(getattr(ds, s).ids) == 0).sum()) for s in ("train", "valid", "test"))
    assert oov > 100


@pytest.mark.parametrize("protocol", ["criteo_x4_001", "avazu_x4_002"])
def test_many_blocks_same_result(protocol, tmp_path, monkeypatch):
    """Text blocks of ~3 kB (the header only in the first) and 32-row write blocks give FuxiCTR's result too."""
    monkeypatch.setattr(bars, "WRITE_BLOCK_ROWS", 32)  # 25 blocks: merged after 16
    proto = bars.PROTOCOLS[protocol]
    ds = prepare("bars", str(FIX / proto.dataset), str(tmp_path / "c"), protocol=protocol, block_bytes=3000)
    assert_same_as_fuxictr(ds, proto, np.load(FIX / f"fuxictr_{protocol}.npz"))


def test_fixture_versions():
    v = json.loads((FIX / "fuxictr_versions.json").read_text())
    assert v["fuxictr"] == "2.3.7"


@pytest.mark.parametrize("x", [-3, -2, -1, 0, 1, 2, 3, 4, 7, 8, 9, 10, 16, 17, 100, 1000, 123456, 2**31 - 1])
def test_criteo_bucket_is_fuxictrs_formula(x):
    """FuxiCTR's convert_to_bucket, transcribed: natural log squared (not the log2 its README describes)."""
    want = int(math.floor(math.log(x) ** 2)) if x > 2 else int(x)
    assert bars.criteo_bucket(np.array([x]))[0] == want
    assert bars.criteo_bucket(np.array([3, 10, 100]))[2] == 21  # floor(ln(100)^2) = floor(21.2); log2 gives 6


def test_criteo_bucket_at_every_boundary():
    """Vectorized np.log agrees with the scalar math.log at both integers around each bucket edge e^sqrt(k)."""
    k = np.arange(1, 462)  # ln(2^31)^2 < 462
    edge = np.exp(np.sqrt(k))
    xs = np.unique(np.concatenate([np.floor(edge), np.ceil(edge), np.floor(edge) - 1, np.ceil(edge) + 1]))
    xs = xs[(xs > 2) & (xs < 2**31)].astype(np.int64)
    want = np.array([int(math.floor(math.log(int(x)) ** 2)) for x in xs])
    np.testing.assert_array_equal(bars.criteo_bucket(xs), want)


@pytest.mark.parametrize("n1,n0", [(1, 9), (37, 1003), (500, 501)])
def test_x4_split_sizes_and_strata(n1, n0):
    label = np.r_[np.ones(n1), np.zeros(n0)][np.random.default_rng(3).permutation(n0 + n1)]
    codes = bars.x4_split(label, 2018)
    for cls, m in ((0, n0), (1, n1)):
        c = codes[label == cls]
        assert (c == bars.TEST).sum() == -(-m // 10)             # fold 0 of a round-robin deal: ceil(m / 10)
        assert (c == bars.VALID).sum() == -(-(m - 1) // 10)       # fold 1: ceil((m - 1) / 10)
        assert (c == bars.TRAIN).sum() == m - (-(-m // 10)) - (-(-(m - 1) // 10))
    np.testing.assert_array_equal(codes, bars.x4_split(label, 2018))
    assert not np.array_equal(codes, bars.x4_split(label, 2019))


def _published_rows(dataset: str) -> tuple[list[str], list[list[str]]]:
    lines = []
    for split in ("train", "valid", "test"):
        text = (FIX / dataset / f"{split}.csv").read_text().splitlines()
        header, lines = text[0].split(","), lines + [ln.split(",") for ln in text[1:]]
    return header, lines


def test_raw_criteo_train_txt(tmp_path):
    """Kaggle's train.txt (tab, no header): same tokens as the CSV; our split; vocab = Counter over train rows."""
    header, rows = _published_rows("criteo")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.txt").write_text("".join("\t".join(r) + "\n" for r in rows))
    ds = prepare("bars", str(tmp_path / "raw"), str(tmp_path / "c"), protocol="criteo_x4_001")
    label = np.array([float(r[0]) for r in rows])
    codes = bars.x4_split(label, 2018)
    assert ds.meta["splits"] == {nm: int((codes == i).sum()) for i, nm in enumerate(("train", "valid", "test"))}
    np.testing.assert_array_equal(np.asarray(ds.test.label), label[codes == bars.TEST])
    vocab = np.load(os.path.join(ds.meta["cache_dir"], "vocab.npz"))
    train = [r for r, c in zip(rows, codes, strict=True) if c == bars.TRAIN]
    for j, f in [(1, "I1"), (2, "I2"), (14, "C1"), (39, "C26")]:
        vals = [r[j] for r in train]
        if f.startswith("I"):  # missing -> 0, then the bucket, in plain Python
            toks = [str((lambda v: int(math.floor(math.log(v) ** 2)) if v > 2 else int(v))(int(v or 0)))
                    for v in vals]
        else:
            toks = [v for v in vals if v != ""]
        kept = {t for t, n in collections.Counter(toks).items() if n >= 10}
        assert sorted(vocab[f].tolist()) == sorted(_keys(bars.PROTOCOLS["criteo_x4_001"], f, kept).tolist()), f
    # the same line gives the same keys in both formats
    bad = BadRows("error")
    proto = bars.PROTOCOLS["criteo_x4_002"]
    tab = "".join("\t".join(r) + "\n" for r in rows[:50]).encode()
    csv = "".join(",".join(r) + "\n" for r in rows[:50]).encode()
    ln = np.arange(50)
    a = bars.parse_block(tab, ln, "t", proto, ["label", *header[1:]], "label", "\t", bad)
    b = bars.parse_block(csv, ln, "c", proto, header, "Label", ",", bad)
    np.testing.assert_array_equal(a[0], b[0])
    for f in proto.fields:
        np.testing.assert_array_equal(a[1][f], b[1][f])


def test_raw_avazu_time_fields(tmp_path):
    """Avazu's Kaggle train (one CSV): id dropped; hour -> hour, weekday (%w) and weekend, by datetime."""
    import datetime

    header, rows = _published_rows("avazu")
    (tmp_path / "train").write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    ds = prepare("bars", str(tmp_path / "train"), str(tmp_path / "c"), protocol="avazu_x4_002")
    label = np.array([float(r[1]) for r in rows])
    codes = bars.x4_split(label, 2018)
    vocab = np.load(os.path.join(ds.meta["cache_dir"], "vocab.npz"))
    test_rows = [r for r, c in zip(rows, codes, strict=True) if c == bars.TEST]
    f = {nm: ds.schema.field_names.index(nm) for nm in ("hour", "weekday", "weekend")}
    for r, ids in zip(test_rows, np.asarray(ds.test.ids), strict=True):
        d = datetime.date(2000 + int(r[2][:2]), int(r[2][2:4]), int(r[2][4:6]))
        want = {"hour": int(r[2][6:]), "weekday": int(d.strftime("%w")), "weekend": int(d.strftime("%w") in "06")}
        for nm, v in want.items():
            assert ids[f[nm]] == 0 or vocab[nm][ids[f[nm]] - 1] == v, (nm, r[2])
    assert set(vocab["weekend"].tolist()) == {0, 1} and set(vocab["weekday"].tolist()) == set(range(7))
    assert "id" not in ds.schema.field_names and len(ds.schema.field_names) == 24


def test_errors_name_the_argument_or_file(tmp_path, capsys):
    with pytest.raises(OptionError, match="protocol must be one of") as e:
        prepare("bars", str(FIX / "criteo"), str(tmp_path / "a"), protocol="criteo_x9")
    assert e.value.option == "protocol"
    assert data_main(["prepare", "avazu", "--protocol", "criteo_x4_001", "--input", str(FIX / "criteo"),
                      "--out", str(tmp_path / "b")]) == 2
    assert "argument --protocol: criteo_x4_001 is a protocol of criteo, not of avazu" in capsys.readouterr().err
    assert data_main(["prepare", "criteo", "--protocol", "criteo_x4_001", "--min-count", "3", "--input",
                      str(FIX / "criteo"), "--out", str(tmp_path / "b")]) == 2
    assert "argument --min-count: --protocol criteo_x4_001 fixes" in capsys.readouterr().err
    pub = tmp_path / "pub"
    pub.mkdir()
    for s in ("train", "valid", "test"):
        (pub / f"{s}.csv").write_text((FIX / "criteo" / f"{s}.csv").read_text())
    text = (pub / "valid.csv").read_text().splitlines()
    cells = text[3].split(",")
    cells[1] = "x7"  # I1 on line 4
    text[3] = ",".join(cells)
    (pub / "valid.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataFormatError, match=r"valid\.csv, line 4, column 'I1': .* is not an integer"):
        prepare("bars", str(pub), str(tmp_path / "c"), protocol="criteo_x4_002")
    assert not (tmp_path / "c").exists()
    lines = (FIX / "criteo" / "test.csv").read_text().splitlines()
    (pub / "valid.csv").write_text("\n".join([lines[0]] + ["0" + ln[1:] for ln in lines[1:]]) + "\n")
    with pytest.raises(DataFormatError, match=r"valid\.csv: the valid split's 100 labels are all 0"):
        prepare("bars", str(pub), str(tmp_path / "c"), protocol="criteo_x4_002")
    (pub / "valid.csv").write_text("Label,I1\n0,1\n")
    with pytest.raises(DataFormatError, match=r"valid\.csv, line 1, column 'I2': header lacks"):
        prepare("bars", str(pub), str(tmp_path / "c"), protocol="criteo_x4_002")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither BARS's train.csv"):
        prepare("bars", str(tmp_path / "empty"), str(tmp_path / "d"), protocol="avazu_x4_001")


def test_prepare_cli_and_reopen(tmp_path, capsys):
    out = tmp_path / "c"
    assert data_main(["prepare", "criteo", "--protocol", "criteo_x4_002", "--input", str(FIX / "criteo"),
                      "--out", str(out), "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"] == {"train": 600, "valid": 100, "test": 100}
    ds = load_dataset("bars", str(out))  # the prepared cache opens without the options
    assert_same_as_fuxictr(ds, bars.PROTOCOLS["criteo_x4_002"], np.load(FIX / "fuxictr_criteo_x4_002.npz"))


def test_train_protocol_sets_dataset_and_dim(tmp_path, monkeypatch, capsys):
    import mlet_jax.train as train

    seen = []
    monkeypatch.setattr(train, "run", lambda cfg, **kw: seen.append(cfg) or {})
    train.main(["--protocol", "avazu_x4_002", "--data-dir", str(FIX / "avazu"), "--model", "dcn", "--no-progress"])
    train.main(["--protocol", "criteo_x4_001", "--data-dir", str(FIX / "criteo"), "--d", "4", "--no-progress"])
    assert (seen[0].dataset, seen[0].d, dict(seen[0].data_options)) == ("bars", 40, {"protocol": "avazu_x4_002"})
    assert (seen[1].d, dict(seen[1].data_options)) == (4, {"protocol": "criteo_x4_001"})
    for argv, msg in ((["--protocol", "criteo_x4_001"], "needs --data-dir"),
                      (["--protocol", "criteo_x4_001", "--dataset", "avazu", "--data-dir", "x"], "not of --dataset"),
                      (["--protocol", "nope"], "invalid choice")):
        with pytest.raises(SystemExit) as e:
            train.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
    assert len(seen) == 2


@pytest.mark.slow
def test_train_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, "-m", "mlet_jax.train", "--protocol", "criteo_x4_001", "--data-dir",
                    str(FIX / "criteo"), "--model", "deepfm", "--batch-size", "100", "--no-progress", "--out",
                    str(out)], check=True, cwd=ROOT, env={**os.environ, "MLET_JAX_CACHE": str(tmp_path / "cache")},
                   capture_output=True)
    rec = json.loads(out.read_text())
    assert rec["settings"]["d"] == 16 and rec["settings"]["dataset"] == "bars"
    assert rec["dataset_meta"]["protocol"] == "criteo_x4_001" and rec["steps"] == 6  # 600 train rows / 100
    assert 0.0 <= rec["test_auc"] <= 1.0


def test_live_fuxictr(tmp_path):
    """FuxiCTR itself, now, on the committed inputs (MLET_FUXICTR_PYTHON=/path/to/python with fuxictr 2.3.7)."""
    py = os.environ.get("MLET_FUXICTR_PYTHON")
    if not py:
        pytest.skip("set MLET_FUXICTR_PYTHON to an interpreter with fuxictr (see experiments/parity_fuxictr.py)")
    if subprocess.run([py, "-c", "import fuxictr"], capture_output=True).returncode != 0:
        pytest.skip(f"MLET_FUXICTR_PYTHON={py} cannot import fuxictr")
    subprocess.run([py, str(ROOT / "experiments" / "parity_fuxictr.py"), "--inputs", str(FIX), "--out",
                    str(tmp_path / "fx")], check=True, capture_output=True)
    for protocol, proto in bars.PROTOCOLS.items():
        ds = prepare("bars", str(FIX / proto.dataset), str(tmp_path / protocol), protocol=protocol)
        assert_same_as_fuxictr(ds, proto, np.load(tmp_path / "fx" / f"fuxictr_{protocol}.npz"))
