"""mlet_jax.data.fetch: RecBole's ml-100k atomic files -> the original u.data/u.user/u.item, read by the loader.

Reference: hand-written ML-100K lines for three atomic-file rows (GroupLens' formats, README of ml-100k).
"""

import os
import zipfile

import numpy as np
import pytest

from mlet_jax.data import fetch
from mlet_jax.data.registry import load_dataset

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n" \
        "186\t302\t5\t891717742\n196\t302\t4\t881250950\n"
USER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n196\t49\tM\twriter\t55105\n" \
       "186\t39\tF\texecutive\t00000\n"
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" \
       "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"


def _wheel(tmp_path, **override):
    texts = {"inter": INTER, "user": USER, "item": ITEM, **override}
    path = tmp_path / fetch.WHEEL
    with zipfile.ZipFile(path, "w") as z:
        for k, v in texts.items():
            z.writestr(fetch.MEMBER.format(k), v)
    return str(path)


def test_convert_gives_the_original_format(tmp_path):
    out = fetch.convert(_wheel(tmp_path), str(tmp_path / "ml"))
    assert open(os.path.join(out, "u.data")).read() == "196\t242\t3\t881250949\n186\t302\t5\t891717742\n" \
                                                        "196\t302\t4\t881250950\n"
    assert open(os.path.join(out, "u.user")).read() == "196|49|M|writer|55105\n186|39|F|executive|00000\n"
    want = ["242|Kolya (1996)|01-Jan-1996|||0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
            "302|L.A. Confidential (1997)|01-Jan-1997|||0|0|0|0|0|0|1|0|0|0|1|0|0|1|0|0|1|0|0"]
    assert open(os.path.join(out, "u.item"), encoding="latin-1").read().splitlines() == want
    assert fetch.fetch_ml100k(out) == out  # built once: a second call reuses it


def test_the_loader_reads_the_converted_files(tmp_path):
    rows = "".join(f"{196 if t % 3 else 186}\t{242 if t % 2 else 302}\t{(1, 2, 4, 5)[t % 4]}\t{880000000 + t}\n"
                   for t in range(40))
    out = fetch.convert(_wheel(tmp_path, inter=INTER.split("\n")[0] + "\n" + rows), str(tmp_path / "ml"))
    ds = load_dataset("movielens", out, cache_dir=str(tmp_path / "cache"), test_fraction=0.25)
    labels = np.concatenate([ds.train.label, ds.test.label])
    assert len(labels) == 40 and labels.sum() == 20  # ratings 4 and 5 are positive (threshold 4)
    assert ds.schema.field_names[:2] == ("user", "item")


def test_refusals(tmp_path):
    wheel = _wheel(tmp_path)
    with pytest.raises(ValueError, match="inside the repository"):
        fetch.convert(wheel, os.path.join(fetch.REPO_ROOT, "data_ml100k"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        fetch.convert(wheel, str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="outside ML-100K"):
        fetch.convert(_wheel(tmp_path, item=ITEM.replace("Comedy", "Comedy Noir")), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="line 2 has 4 fields"):
        fetch.convert(_wheel(tmp_path, user=USER.replace("\t55105", "")), str(tmp_path / "y"))
    with pytest.raises(FileNotFoundError, match="wheel"):
        fetch.convert(str(tmp_path / "missing.whl"), str(tmp_path / "z"))
    with pytest.raises(SystemExit) as e:
        fetch.main(["ml-100k", "--wheel", str(tmp_path / "missing.whl")])
    assert e.value.code == 2
    folder, why = fetch.ml100k_or_none(str(foreign), wheel)
    assert folder is None and "did not write" in why
