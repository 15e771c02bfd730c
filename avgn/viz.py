"""Figure helpers: every figure of the book is saved to ``figures/`` as PNG and SVG."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from avgn.io import atomic_path  # noqa: E402

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _atomic_savefig(fig: Figure, path: Path, **kwargs) -> None:
    with atomic_path(path, fsync=False) as tmp:
        fig.savefig(tmp, **kwargs)


def save_figure(fig: Figure, name: str, figures_dir: str | Path = "figures", dpi: int = 150) -> dict[str, Path]:
    """Save ``fig`` as ``figures_dir/name.png`` and ``figures_dir/name.svg`` (atomically).

    Args:
        fig: the matplotlib figure.
        name: file stem: letters, digits, ``_``, ``-``, ``.`` (e.g. ``"00_metric_behaviour"``).
        figures_dir: output folder (created if missing).
        dpi: resolution of the PNG.

    Returns:
        ``{"png": path, "svg": path}``.
    """
    if not _NAME.match(name):
        raise ValueError(f"figure name {name!r} must match {_NAME.pattern}")
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / f"{name}.png", "svg": out / f"{name}.svg"}
    _atomic_savefig(fig, paths["png"], dpi=dpi, bbox_inches="tight")
    # SVGs embed a creation date by default; drop it so reruns give identical files
    _atomic_savefig(fig, paths["svg"], bbox_inches="tight", metadata={"Date": None})
    return paths


def set_style() -> None:
    """The book's plotting style (seaborn ``whitegrid``, readable font sizes)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold"})
