"""File helpers shared by every writer: command lines, experiments, exports.

The rule: a writer never overwrites or deletes what it did not write. A file it may replace is missing or one of
ours: JSON (or JSON lines) whose first object has a ``"format"`` starting with ``mlet_jax``. A folder it may write
into is missing, empty, or holds the marker file :data:`OUTPUT_MARKER` that an earlier run left there. Files are
written under a temporary name and renamed into place, so nothing is ever half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FORMAT_PREFIX = "mlet_jax"
OUTPUT_MARKER = ".mlet_jax-output"


class OutputExistsError(FileExistsError):
    """An output path holds something mlet_jax did not write (the message names it and what to do)."""


def is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSON or JSON-lines file whose first object carries our ``"format"`` tag."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    text = head.decode("utf-8", errors="replace").lstrip()
    first = text.split("\n", 1)[0]
    for candidate in (first, text):  # JSON lines, or one (possibly indented) JSON object
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        return isinstance(obj, dict) and str(obj.get("format", "")).startswith(FORMAT_PREFIX)
    return False


def check_file_target(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` as a ``Path`` if a file can be written there, else ``ValueError`` naming ``what``: it is a folder, or
    its folder is missing or not writable. Each writer adds its own test of whether an existing file is its own."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; give a file name")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{what} {str(path)!r}: its folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{what} {str(path)!r}: its folder {str(parent)!r} is not writable")
    return out


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail before any long work when ``path`` cannot be written or holds a file we did not write.

    Raises:
        ValueError: ``path`` is a folder, or its folder is missing or not writable (names ``what``).
        OutputExistsError: ``path`` exists and is not one of ours.
    """
    out = check_file_target(path, what)
    if out.exists() and not is_ours(out):
        raise OutputExistsError(f"{what} {str(path)!r} exists and was not written by mlet_jax; it is left as it is: "
                                "move it away or choose another name")
    return out


def check_output_dir(path: str | os.PathLike, what: str = "output folder", writes: tuple[str, ...] = (),
                     signs: tuple[str, ...] = ()) -> Path:
    """Fail unless ``path`` is missing, empty, or an output folder of ours: it holds :data:`OUTPUT_MARKER`, or (an
    earlier run's, from before the marker) only files named in ``writes``, or one of the files named in ``signs``
    (those only this writer produces)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file; give a folder")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        ours = (not names or OUTPUT_MARKER in names or (bool(writes) and names <= set(writes))
                or bool(names & set(signs)))
        if not ours:
            raise OutputExistsError(f"{what} {str(path)!r} holds files mlet_jax did not write; they are left as "
                                    "they are: give a missing or empty folder")
    parent = out.absolute().parent
    if not out.exists() and not os.access(_existing_ancestor(parent), os.W_OK):
        raise ValueError(f"{what} {str(path)!r} cannot be created: {str(parent)!r} is not writable")
    return out


def claim_output_dir(path: str | os.PathLike, what: str = "output folder", writes: tuple[str, ...] = (),
                     signs: tuple[str, ...] = ()) -> Path:
    """:func:`check_output_dir`, then create the folder and mark it as ours."""
    out = check_output_dir(path, what, writes, signs)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text("written by mlet_jax; its runs may replace the files here\n")
    return out


def _existing_ancestor(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name, then rename it into place (never half-written)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_output(path: str | os.PathLike, records: dict | list[dict], fmt: str, what: str = "output") -> None:
    """Write one JSON object (or JSON lines for a list) tagged ``"format": fmt``, refusing a foreign file."""
    if not fmt.startswith(FORMAT_PREFIX):
        raise ValueError(f"format tags start with {FORMAT_PREFIX!r}, got {fmt!r}")
    check_output_file(path, what)
    rows = records if isinstance(records, list) else [records]
    text = "".join(json.dumps({"format": fmt, **r}, default=float) + "\n" for r in rows)
    atomic_write_text(path, text)
