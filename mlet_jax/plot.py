"""Curves from run logs: training loss, validation AUC and embedding spectra, one PNG.

    python -m mlet_jax.plot results/single.log.jsonl results/mlet.log.jsonl --out results/curves.png

Reads one or more run logs (:mod:`mlet_jax.runlog`, written by ``python -m mlet_jax.train --log`` or next to
``--out``) and draws, per run: the training loss, the validation AUC (the test AUC as a marker at the last step) and
the training samples/s against the step, and when the logs hold spectra (``--spectra-every``) the mean effective
rank and information abundance over fields against the step and the singular values of one field (``--field``,
default the largest), divided by the largest, at the first and last record. Resumed runs are drawn as one curve
(the resumed part replaces what the run before it logged after the restored step). The PNG is written under a
temporary name and renamed; an existing file is replaced only when this command wrote it (its PNG ``Software`` text
says so).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence

from mlet_jax.io import check_file_target
from mlet_jax.runlog import RunLogError, curves, read_records

SOFTWARE = "mlet_jax.plot"


def _check_png_target(path: str) -> None:
    if not path.lower().endswith(".png"):
        raise ValueError(f"--out {path!r} must end with .png")
    check_file_target(path, "--out")
    if os.path.exists(path) and os.path.getsize(path) > 0 and not _is_own_png(path):
        raise ValueError(f"--out {path!r} exists and was not written by {SOFTWARE}; refusing to overwrite it")


def _is_own_png(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == SOFTWARE
    except Exception:  # not an image at all
        return False


def _label(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".log.jsonl", ".jsonl"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def plot_runs(paths: Sequence[str], out: str, *, labels: Sequence[str] | None = None,
              field: int | None = None) -> str:
    """Draw the run logs ``paths`` into the PNG ``out`` (see the module docstring); returns ``out``.

    Raises:
        RunLogError: a log is missing or malformed (the message names the file and line).
        ValueError: ``out`` may not be written, ``labels`` does not match ``paths``, or ``field`` is not in a
            log's spectra.
    """
    if not paths:
        raise ValueError("give at least one run log")
    labels = list(labels) if labels else [_label(p) for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} run logs")
    _check_png_target(out)
    data = [curves(read_records(p)) for p in paths]  # every log is checked before anything is drawn
    with_spectra = [c for c in data if c.get("spectra")]
    if field is not None:
        for p, c in zip(paths, data, strict=True):
            if c.get("spectra") and not 0 <= field < len(c["spectra"][0]["fields"]):
                raise ValueError(f"--field {field}: {p} has spectra of {len(c['spectra'][0]['fields'])} fields")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if with_spectra else 1
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.6 * rows), squeeze=False)
    ax_loss, ax_auc, ax_speed = axes[0]
    for i, (lab, c) in enumerate(zip(labels, data, strict=True)):
        color = f"C{i % 10}"
        tr = [r for r in c.get("train", []) if r.get("loss") is not None]
        ax_loss.plot([r["step"] for r in tr], [r["loss"] for r in tr], color=color, lw=1, label=lab)
        sp_tr = [r for r in tr if r.get("samples_per_s") is not None]
        ax_speed.plot([r["step"] for r in sp_tr], [r["samples_per_s"] for r in sp_tr], color=color, lw=1, label=lab)
        ev = c.get("eval", [])
        if ev:
            ax_auc.plot([r["step"] for r in ev], [r["auc"] for r in ev], color=color, marker=".", label=lab)
        for r in c.get("test", [])[-1:]:
            ax_auc.plot([r["step"]], [r["auc"]], color=color, marker="*", ms=11, ls="none",
                        label=f"{lab} (test)")
        sp = c.get("spectra", [])
        if sp:
            steps = [r["step"] for r in sp]
            axes[1][0].plot(steps, [r["mean_effective_rank"] for r in sp], color=color, marker=".", label=lab)
            axes[1][1].plot(steps, [r["mean_information_abundance"] for r in sp], color=color, marker=".",
                            label=lab)
            f = field if field is not None else max(range(len(sp[-1]["fields"])),
                                                    key=lambda j: sp[-1]["fields"][j]["rows"])
            for r, style in ((sp[0], ":"), (sp[-1], "-")):
                s = r["fields"][f]["singular_values"]
                if s and s[0] > 0:
                    axes[1][2].semilogy(range(1, len(s) + 1), [v / s[0] for v in s], color=color, ls=style,
                                        marker=".", label=f"{lab} step {r['step']} (field {r['fields'][f]['name']})")
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss")
    ax_auc.set(title="validation AUC (* test)", xlabel="step", ylabel="AUC")
    ax_speed.set(title="throughput", xlabel="step", ylabel="samples/s")
    if rows == 2:
        axes[1][0].set(title="effective rank (mean over fields)", xlabel="step", ylabel="exp(entropy)")
        axes[1][1].set(title="information abundance (mean over fields)", xlabel="step", ylabel="sum s / max s")
        axes[1][2].set(title="singular values / largest", xlabel="index", ylabel="s_i / s_1")
    for ax in (a for row in axes for a in row):
        if ax.has_data():
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": SOFTWARE})
    plt.close(fig)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m mlet_jax.plot", description=__doc__.split("\n")[0])
    p.add_argument("logs", nargs="+", metavar="RUNLOG", help="run logs (JSON lines) to draw")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--label", action="append", default=None, help="one per run log (default: the file names)")
    p.add_argument("--field", type=int, default=None,
                   help="field whose singular values are drawn (default: the one with the most rows)")
    args = p.parse_args(argv)
    try:
        out = plot_runs(args.logs, args.out, labels=args.label, field=args.field)
    except (RunLogError, ValueError) as e:
        p.error(str(e))
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
