"""Issue 16: the full-size generators and the streaming prepare.

Default tests: the generators' format, exact cardinalities and prefix property at small scale; ``prepare criteo`` and
``prepare avazu`` against an independent pure-Python reference of the paper's preprocessing with many finalize blocks
and counting merges. Slow tests: generator -> prepare -> a short training run at 1/1000 of the size (row counts,
vocabulary sizes, held-out AUC), and peak RSS that does not grow with the rows.
"""

from __future__ import annotations

import collections
import datetime
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mlet_jax.data import _build
from mlet_jax.data import generate as gen
from mlet_jax.data.registry import prepare

# ------------------------------------------------------------------------------------------------ the generators


def _criteo_rows(path):
    with open(path) as fh:
        return [ln.rstrip("\n").split("\t") for ln in fh]


def test_criteo_generator_format_and_exact_cardinalities(tmp_path):
    scale = 1e-4
    info = gen.generate("criteo", str(tmp_path / "train.txt"), scale=scale, seed=3)
    rows = _criteo_rows(tmp_path / "train.txt")
    assert len(rows) == info["rows"] == round(gen.CRITEO_ROWS * scale) == 4584
    assert all(len(r) == 40 for r in rows)
    assert {r[0] for r in rows} == {"0", "1"}
    for r in rows[:500]:
        assert all(v == "" or v.lstrip("-").isdigit() for v in r[1:14])
        assert all(v == "" or (len(v) == 8 and int(v, 16) >= 0) for v in r[14:])
    # distinct values per field (the empty value counted, as DLRM counts it) = the scaled Criteo-Kaggle sizes
    want = [k if k <= gen.SMALL_FIELD else max(gen.SMALL_FIELD, round(k * scale)) for k in gen.CRITEO_KAGGLE_VOCAB]
    got = [len({r[14 + j] for r in rows}) for j in range(26)]
    assert got == want == info["cardinalities"]
    assert any(r[14 + 2] == "" for r in rows) and all(r[14] != "" for r in rows)   # C3 has empties, C1 none
    ctr = np.mean([r[0] == "1" for r in rows])
    assert abs(ctr - gen.CRITEO_CTR) < 0.04, ctr
    # full-size numbers of the module are the published ones
    assert sum(gen.CRITEO_KAGGLE_VOCAB) == 33_762_577 and gen.CRITEO_ROWS == 45_840_617


def test_generator_prefix_is_the_files_head_and_seeded(tmp_path):
    """--rows R writes exactly the first R lines of the full file at that scale (blocks of 131,072 rows cut)."""
    full, part, other = tmp_path / "full", tmp_path / "part", tmp_path / "other"
    info = gen.generate("avazu", str(full), scale=0.005, seed=1)
    assert info["rows"] == round(gen.AVAZU_ROWS * 0.005) > gen.BLOCK_ROWS
    gen.generate("avazu", str(part), scale=0.005, seed=1, rows=gen.BLOCK_ROWS + 1000)
    with open(full, "rb") as fh:
        head = b"".join(fh.readline() for _ in range(gen.BLOCK_ROWS + 1001))
    assert part.read_bytes() == head
    gen.generate("avazu", str(other), scale=0.005, seed=2, rows=1000)
    assert other.read_bytes()[:4000] != head[:4000]
    with pytest.raises(FileExistsError):
        gen.generate("avazu", str(part), scale=0.005, seed=1, rows=10)


def test_avazu_generator_format_and_exact_cardinalities(tmp_path):
    scale = 1e-4
    info = gen.generate("avazu", str(tmp_path / "train"), scale=scale, seed=0)
    with open(tmp_path / "train") as fh:
        header = fh.readline().rstrip("\n").split(",")
        rows = [ln.rstrip("\n").split(",") for ln in fh]
    assert header == ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
                      "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
                      "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
    assert len(rows) == info["rows"] == round(gen.AVAZU_ROWS * scale)
    assert all(len(r) == 24 for r in rows)
    assert len({r[0] for r in rows}) == len(rows)                      # unique ids
    hours = [int(r[2]) for r in rows]
    assert hours == sorted(hours) and hours[0] == 14102100 and hours[-1] == 14103023
    assert all(0 <= h % 100 <= 23 and 21 <= h // 100 % 100 <= 30 for h in hours)
    want = [k if k <= gen.SMALL_FIELD else max(gen.SMALL_FIELD, round(k * scale)) for k in gen.AVAZU_VOCAB.values()]
    got = [len({r[3 + j] for r in rows}) for j in range(21)]
    assert got == want
    ctr = np.mean([r[1] == "1" for r in rows])
    assert abs(ctr - gen.AVAZU_CTR) < 0.04, ctr


def test_generate_cli_usage_errors(tmp_path, capsys):
    (tmp_path / "x").write_text("theirs")
    for args, word in ((["criteo", "--out", str(tmp_path / "y"), "--scale", "2"], "--scale"),
                       (["criteo", "--out", str(tmp_path / "x")], "--out"),
                       (["avazu", "--out", str(tmp_path / "y"), "--rows", "0"], "--rows"),
                       (["avazu", "--out", str(tmp_path / "y"), "--scale", "1e-4", "--rows", "5000"], "--rows")):
        with pytest.raises(SystemExit) as e:
            gen.main(args)
        last = capsys.readouterr().err.strip().splitlines()[-1]       # the one-line error, not the usage
        assert e.value.code == 2 and f"argument {word}" in last, last
    assert (tmp_path / "x").read_text() == "theirs" and not (tmp_path / "y").exists()


# -------------------------------------------------------------------- prepare against a pure-Python reference


@pytest.fixture
def many_blocks(monkeypatch):
    """Force finalize into many blocks and its key tables through many doublings (and fit_vocab_blocks, Vocab into
    their counting merges and sorted-lookup path)."""
    monkeypatch.setattr(_build, "_BLOCK_ROWS", 700)
    monkeypatch.setattr(_build, "_TABLE_SLOTS", 2)
    monkeypatch.setattr(_build, "_MERGE_ROWS", 50)
    monkeypatch.setattr(_build, "_SORTED_LOOKUP", 40)


def _vocab(train_keys):
    """ids 1.. by decreasing training count, ties by increasing key (the documented rule)."""
    c = collections.Counter(train_keys)
    order = sorted(c, key=lambda k: (-c[k], k))
    return order, {k: i + 1 for i, k in enumerate(order)}


def _check_cache(out, want_ids, want_dense, want_label, codes, vocab_keys, sizes):
    names = {0: "train", 1: "valid", 2: "test"}
    for code, nm in names.items():
        sel = [i for i, c in enumerate(codes) if c == code]
        if not sel and nm == "valid":
            continue
        np.testing.assert_array_equal(np.load(out / f"{nm}_ids.npy"), np.array([want_ids[i] for i in sel], np.int32))
        np.testing.assert_array_equal(np.load(out / f"{nm}_label.npy"), np.array([want_label[i] for i in sel],
                                                                                 np.float32))
        d = np.load(out / f"{nm}_dense.npy")
        np.testing.assert_array_equal(d, np.array([want_dense[i] for i in sel], np.float32).reshape(d.shape))
    voc = np.load(out / "vocab.npz")
    for name, keys in vocab_keys.items():
        np.testing.assert_array_equal(voc[name], np.array(keys, np.int64))
    train = [want_ids[i] for i, c in enumerate(codes) if c == 0]
    counts = []
    for j, v in enumerate(sizes):
        cnt = collections.Counter(r[j] for r in train)
        counts += [cnt.get(i, 0) for i in range(v)]
    np.testing.assert_array_equal(np.load(out / "id_counts.npy"), np.array(counts, np.int64))


def test_prepare_criteo_matches_reference(tmp_path, many_blocks):
    path = tmp_path / "train.txt"
    gen.generate("criteo", str(path), scale=1e-4, seed=5)
    rows = _criteo_rows(path)
    n = len(rows)
    per = n // 7
    last, n_test = n - per, -(-per // 2)
    codes = [0] * last + [2] * n_test + [1] * (n - last - n_test)
    label = [float(r[0]) for r in rows]
    dense = [[math.log1p(max(int(v), 0)) if v else 0.0 for v in r[1:14]] for r in rows]
    keys = [[int(v, 16) if v else -1 for v in r[14:]] for r in rows]
    vocab_keys, maps = {}, []
    for j in range(26):
        order, m = _vocab([keys[i][j] for i in range(n) if codes[i] == 0])
        vocab_keys[f"C{j + 1}"], maps = order, maps + [m]
    ids = [[maps[j].get(k[j], 0) for j in range(26)] for k in keys]
    ds = prepare("criteo", str(path), str(tmp_path / "cache"), block_bytes=1 << 16)
    assert list(ds.schema.vocab_sizes) == [len(m) + 1 for m in maps]
    _check_cache(tmp_path / "cache", ids, dense, label, codes, vocab_keys, ds.schema.vocab_sizes)


def _fnv63(s: str) -> int:
    if s == "":
        return -1
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & (2**64 - 1)
    return h & (2**63 - 1)


def test_prepare_avazu_matches_reference(tmp_path, many_blocks):
    path = tmp_path / "train"
    gen.generate("avazu", str(path), scale=1e-4, seed=6)
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split(",")
        rows = [ln.rstrip("\n").split(",") for ln in fh]
    n = len(rows)
    perm = np.random.default_rng(0).permutation(n)
    codes = [0] * n
    for i in perm[:round(n * 0.1)]:
        codes[i] = 2
    cats = header[3:]
    keys = []
    for r in rows:
        h = r[2]
        wd = datetime.date(2000 + int(h[:2]), int(h[2:4]), int(h[4:6])).weekday()
        keys.append([int(h[6:8]), wd, *(_fnv63(v) for v in r[3:])])
    names = ["hour_of_day", "weekday", *cats]
    vocab_keys, maps = {}, []
    for j, nm in enumerate(names):
        order, m = _vocab([keys[i][j] for i in range(n) if codes[i] == 0])
        vocab_keys[nm], maps = order, maps + [m]
    ids = [[maps[j].get(k[j], 0) for j in range(len(names))] for k in keys]
    ds = prepare("avazu", str(path), str(tmp_path / "cache"), block_bytes=1 << 16)
    assert list(ds.schema.field_names) == names
    _check_cache(tmp_path / "cache", ids, [[] for _ in rows], [float(r[1]) for r in rows], codes, vocab_keys,
                 ds.schema.vocab_sizes)


def test_fit_vocab_blocks_equals_fit_vocab():
    rng = np.random.default_rng(0)
    keys = rng.zipf(1.3, 20_000).astype(np.int64) % 3000 - 1
    a = _build.fit_vocab(keys, min_count=2)
    b = _build.fit_vocab_blocks((keys[i:i + 999] for i in range(0, len(keys), 999)), min_count=2)
    np.testing.assert_array_equal(a.keys, b.keys)
    q = rng.integers(-2, 3500, 5000)
    np.testing.assert_array_equal(a.lookup(q), b.lookup(q))
    with pytest.raises(ValueError, match="min_count"):
        _build.fit_vocab_blocks([keys], min_count=0)


def test_key_table_codes_match_a_dict():
    """KeyTable: codes in order of insertion, -1 for absent keys, through collisions and many doublings (any int64,
    including 0, -1 and the smallest)."""
    rng = np.random.default_rng(1)
    table, ref = _build.KeyTable(2), {}
    for _ in range(30):
        x = np.concatenate([rng.integers(-5, 50, 200), rng.integers(-2**62, 2**62, int(rng.integers(0, 3000))),
                            [np.iinfo(np.int64).min, 0, -1]])
        np.testing.assert_array_equal(table.find(x), [ref.get(int(k), -1) for k in x])
        new = np.unique(x[table.find(x) < 0])
        table.add(new)
        ref.update({int(k): len(ref) + i for i, k in enumerate(new)})
        np.testing.assert_array_equal(table.find(x), [ref[int(k)] for k in x])
    assert table.n == len(ref) > 40_000 and len(table._slot_code) >= 2 * table.n
    np.testing.assert_array_equal(table.keys[:table.n], list(ref))


# ------------------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["criteo", "avazu"])
def test_pipeline_at_one_thousandth(tmp_path, dataset):
    """generate -> prepare -> one short training epoch at 1/1000 of the size: row counts, vocabulary sizes, AUC."""
    from mlet_jax.data.cache import open_cache
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models import build_model
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer, fit

    scale = 1e-3
    raw = tmp_path / ("train.txt" if dataset == "criteo" else "train")
    info = gen.generate(dataset, str(raw), scale=scale, seed=0)
    n = info["rows"]
    assert n == round((gen.CRITEO_ROWS if dataset == "criteo" else gen.AVAZU_ROWS) * scale)
    prepare(dataset, str(raw), str(tmp_path / "cache"), vocab_split="all")
    ds = open_cache(str(tmp_path / "cache"))
    sizes = list(ds.schema.vocab_sizes)
    if dataset == "criteo":
        per = n // 7
        want = {"train": n - per, "test": -(-per // 2), "valid": per - -(-per // 2)}
        assert sizes == [k + 1 for k in info["cardinalities"]]         # every value plus the OOV id
    else:
        want = {"train": n - round(n * 0.1), "test": round(n * 0.1)}
        assert sizes[:2] == [25, 8]      # 24 hours + OOV; 7 weekdays + OOV
        assert sizes[2:] == [k + 1 for k in info["cardinalities"]]
    got = {nm: len(getattr(ds, nm).label) for nm in want}
    assert got == want
    model = build_model("dlrm", ds.schema, EmbeddingSpec("single", dim=16))
    trainer = Trainer(model, TrainConfig(OptimizerSpec("adagrad", lr=0.05)))
    state, _ = fit(trainer, ds.train, batch_size=256, epochs=2, progress=False)
    auc = trainer.evaluate(state.params, ds.test)["auc"]
    print(f"{dataset} at 1/1000: {n} rows, test AUC {auc:.4f}")
    assert auc > 0.6, auc


# The child's own peak (VmHWM, KiB): getrusage's ru_maxrss survives exec on Linux, so in a child of pytest it
# reported pytest's own peak (435 MiB, or 815 MiB after the training tests) whatever prepare did.
_RSS_CHILD = textwrap.dedent("""
    import sys
    from mlet_jax.data.registry import prepare
    prepare("criteo", sys.argv[1], sys.argv[2])
    print(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
""")


@pytest.mark.slow
def test_prepare_peak_rss_does_not_grow_with_rows(tmp_path):
    """Peak RSS of prepare at 300k vs 900k rows of one file: the old memory-mapped finalize grew ~430 B/row
    (~250 MiB here); now the difference is the distinct values' state and allocator noise (2026-12-03: 301 and
    342 MiB, +335k distinct values). The smaller prefix must fill the parse's pipeline (a 16 MiB block is ~67k rows
    here, and the reader, the parser and the store's writer each hold one or two): at 120k rows it holds only two
    blocks and peaked 100 MiB lower (239 MiB), which a growth test would misread as growth with the rows."""
    full = tmp_path / "full.txt"
    gen.generate("criteo", str(full), scale=0.02, seed=0)       # 916,812 rows
    peaks = []
    for rows in (300_000, 900_000):
        d = tmp_path / f"p{rows}"
        d.mkdir()
        with open(full, "rb") as fi, open(d / "train.txt", "wb") as fo:
            for _ in range(rows):
                fo.write(fi.readline())
        r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(d / "train.txt"), str(d / "cache")],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
        peaks.append(int(r.stdout.split()[-1]) / 1024)
        with np.load(d / "cache" / "vocab.npz") as z:
            vocab = sum(z[k].size for k in z.files)
    grow = peaks[1] - peaks[0]
    print(f"peak RSS {peaks[0]:.0f} MiB at 300k rows, {peaks[1]:.0f} MiB at 900k rows ({vocab} vocabulary keys)")
    assert grow < 100, (peaks, vocab)
