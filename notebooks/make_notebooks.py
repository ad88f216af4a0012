"""Build the ``.ipynb`` notebooks from their percent-format ``.py`` sources, without outputs.

    python notebooks/make_notebooks.py          # rewrite every notebooks/NN_*.ipynb from NN_*.py
    python notebooks/make_notebooks.py --check  # exit 1 if a stored notebook differs from its source

The ``.py`` file is the source of truth (reviewable diffs, plain ruff); ``# %%`` starts a code cell and
``# %% [markdown]`` a markdown cell whose lines are comments. Anything before the first marker is dropped. Takes a
second; needs only nbformat.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def sources() -> list[pathlib.Path]:
    """The notebook sources, ``NN_name.py``, in order."""
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def parse(text: str) -> nbformat.NotebookNode:
    """A notebook (no outputs) from percent-format text."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind == "markdown":
            body = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines)
            nb.cells.append(nbformat.v4.new_markdown_cell(body))
        else:
            nb.cells.append(nbformat.v4.new_code_cell("\n".join(lines)))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives byte-identical files
    return nb


def render(src: pathlib.Path) -> str:
    """The ``.ipynb`` text for one source."""
    return nbformat.writes(parse(src.read_text()), version=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a notebook is stale")
    args = ap.parse_args(argv)
    stale = []
    for src in sources():
        dst = src.with_suffix(".ipynb")
        text = render(src)
        if args.check:
            if not dst.exists() or dst.read_text() != text:
                stale.append(dst.name)
        else:
            dst.write_text(text)
            print(f"wrote {dst.relative_to(HERE.parent)}")
    if stale:
        print(f"stale notebooks (run python notebooks/make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
