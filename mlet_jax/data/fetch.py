"""MovieLens-100K in its original format, from the recbole 1.2.1 wheel on the package index.

    python -m mlet_jax.data.fetch ml-100k                    # -> $MLET_JAX_CACHE/raw/ml-100k (~/.cache/mlet_jax)
    python -m mlet_jax.data.fetch ml-100k --wheel recbole-1.2.1-py3-none-any.whl --out DIR

The wheel ships ``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}``: RecBole's atomic files
(tab-separated, typed headers) made from GroupLens' ML-100K. :func:`convert` writes them back as ``u.data``
(user, item, rating, timestamp; tabs), ``u.user`` (user|age|gender|occupation|zip) and ``u.item``
(item|title (year)|01-Jan-year|||19 genre flags; latin-1), which :mod:`mlet_jax.data.movielens` reads. What the
atomic files do not keep is not invented: the release date becomes 1 January of the release year (the loader uses the
year only), the video release date and the IMDb URL are empty.

Without a wheel path :func:`fetch_ml100k` runs ``pip download recbole==1.2.1 --no-deps`` into the cache (the
ordinary client; no other registry query). It never writes into this repository, and writes only into a missing or
empty folder or one it wrote before (marked by ``.mlet_fetch.json``). Where neither the network nor a wheel is at
hand :func:`ml100k_or_none` returns ``None`` with the reason, so experiments can skip their MovieLens runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile

from mlet_jax.io import atomic_write_text

WHEEL = "recbole-1.2.1-py3-none-any.whl"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
MARKER = ".mlet_fetch.json"
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cache_root() -> str:
    return os.environ.get("MLET_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mlet_jax"))


def default_dir() -> str:
    return os.path.join(cache_root(), "raw", "ml-100k")


def _check_out(out: str) -> None:
    """Refuse the repository, a file, and a non-empty folder that this module did not write."""
    a = os.path.realpath(out)
    if a == REPO_ROOT or a.startswith(REPO_ROOT + os.sep):
        raise ValueError(f"out: {out!r} is inside the repository {REPO_ROOT}; data goes into a cache folder")
    if os.path.exists(a) and not os.path.isdir(a):
        raise ValueError(f"out: {out!r} exists and is not a folder")
    if os.path.isdir(a) and os.listdir(a) and not os.path.exists(os.path.join(a, MARKER)):
        raise ValueError(f"out: {out!r} is a non-empty folder that mlet_jax.data.fetch did not write")


def _rows(text: str, name: str, ncols: int) -> list[list[str]]:
    lines = text.splitlines()
    if not lines or ":" not in lines[0]:
        raise ValueError(f"{name}: not a RecBole atomic file (no typed header line)")
    out = []
    for i, ln in enumerate(lines[1:], start=2):
        if not ln.strip():
            continue
        parts = ln.split("\t")
        if len(parts) != ncols:
            raise ValueError(f"{name}: line {i} has {len(parts)} fields, expected {ncols}")
        out.append(parts)
    return out


def convert_texts(inter: str, user: str, item: str) -> dict[str, str]:
    """The three atomic files' texts -> ``{"u.data", "u.user", "u.item"}`` texts."""
    data = "".join(f"{u}\t{i}\t{int(float(r))}\t{int(float(t))}\n"
                   for u, i, r, t in _rows(inter, "ml-100k.inter", 4))
    users = "".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in _rows(user, "ml-100k.user", 5))
    lines = []
    for iid, title, year, cls in _rows(item, "ml-100k.item", 4):
        genres = set(cls.split())
        unknown = sorted(genres - set(GENRES))
        if unknown:
            raise ValueError(f"ml-100k.item: item {iid} has genres {unknown} outside ML-100K's 19")
        year = year.strip()
        full = f"{title} ({year})" if year else title
        date = f"01-Jan-{year}" if year else ""
        lines.append("|".join([iid, full, date, "", "", *("1" if g in genres else "0" for g in GENRES)]) + "\n")
    return {"u.data": data, "u.user": users, "u.item": "".join(lines)}


def convert(wheel: str, out: str) -> str:
    """Write u.data/u.user/u.item of the wheel's ml-100k atomic files into ``out``; returns ``out``."""
    if not os.path.isfile(wheel):
        raise FileNotFoundError(f"wheel: {wheel!r} is not a file")
    _check_out(out)
    try:
        with zipfile.ZipFile(wheel) as z:
            texts = [z.read(MEMBER.format(x)).decode("utf-8") for x in ("inter", "user", "item")]
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"wheel: {wheel!r} has no {MEMBER.format('{inter,user,item}')} ({e})") from None
    files = convert_texts(*texts)
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, MARKER), json.dumps({"source": os.path.basename(wheel),
                                                             "files": sorted(files)}))
    for name, text in files.items():
        if name == "u.item":  # the original's encoding
            tmp = os.path.join(out, f".{name}.tmp")
            with open(tmp, "w", encoding="latin-1", errors="replace") as f:
                f.write(text)
            os.replace(tmp, os.path.join(out, name))
        else:
            atomic_write_text(os.path.join(out, name), text)
    return out


def download_wheel(dest: str, timeout: float = 300.0) -> str:
    """``pip download recbole==1.2.1 --no-deps -d dest``; returns the wheel's path (RuntimeError on failure)."""
    os.makedirs(dest, exist_ok=True)
    path = os.path.join(dest, WHEEL)
    if os.path.isfile(path):
        return path
    cmd = [sys.executable, "-m", "pip", "download", "recbole==1.2.1", "--no-deps", "--only-binary=:all:", "-d", dest]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"pip download recbole==1.2.1 failed: {e}") from None
    if r.returncode != 0 or not os.path.isfile(path):
        raise RuntimeError(f"pip download recbole==1.2.1 failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return path


def fetch_ml100k(out: str | None = None, wheel: str | None = None) -> str:
    """The folder of u.data/u.user/u.item (built once; later calls return it)."""
    out = out or default_dir()
    if all(os.path.isfile(os.path.join(out, f)) for f in ("u.data", "u.user", "u.item", MARKER)):
        return out
    _check_out(out)
    wheel = wheel or download_wheel(os.path.join(cache_root(), "wheels"))
    return convert(wheel, out)


def ml100k_or_none(out: str | None = None, wheel: str | None = None) -> tuple[str | None, str]:
    """``(folder, "")`` or ``(None, why)``: for experiments that skip MovieLens where it cannot be had."""
    try:
        return fetch_ml100k(out, wheel), ""
    except (RuntimeError, OSError, ValueError) as e:
        return None, f"MovieLens-100K unavailable, skipping its runs: {e}"


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=["ml-100k"])
    p.add_argument("--out", default=None, help=f"folder for u.data/u.user/u.item (default {default_dir()})")
    p.add_argument("--wheel", default=None, help=f"a local {WHEEL} (default: pip download it)")
    a = p.parse_args(argv)
    if a.wheel and not os.path.isfile(a.wheel):
        p.error(f"argument --wheel: {a.wheel!r} is not a file")
    try:
        _check_out(a.out or default_dir())
        out = fetch_ml100k(a.out, a.wheel)
    except (ValueError, RuntimeError) as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    print(out)
    return out


if __name__ == "__main__":
    main()
