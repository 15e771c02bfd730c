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


def save_figure(fig: Figure, name: str, figures_dir: str | Path = "figures", dpi: int = 150, source: str | None = None) -> dict[str, Path]:
    """Save ``fig`` as ``figures_dir/name.png`` and ``figures_dir/name.svg`` (atomically).

    Args:
        fig: the matplotlib figure.
        name: file stem: letters, digits, ``_``, ``-``, ``.`` (e.g. ``"00_metric_behaviour"``).
        figures_dir: output folder (created if missing).
        dpi: resolution of the PNG.
        source: where the figure comes from, stored in both files' ``Source`` metadata (the book's
            chapters write ``chapter NN, code revision REV``: :func:`figure_source` reads it back).

    Returns:
        ``{"png": path, "svg": path}``.
    """
    if not _NAME.match(name):
        raise ValueError(f"figure name {name!r} must match {_NAME.pattern}")
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / f"{name}.png", "svg": out / f"{name}.svg"}
    meta = {} if source is None else {"Source": source}
    _atomic_savefig(fig, paths["png"], dpi=dpi, bbox_inches="tight", metadata=meta)
    # SVGs embed a creation date by default; drop it so reruns give identical files
    _atomic_savefig(fig, paths["svg"], bbox_inches="tight", metadata={"Date": None, **meta})
    return paths


def figure_source(path: str | Path) -> str | None:
    """The ``Source`` metadata :func:`save_figure` stored in a PNG (``None`` when it has none)."""
    from PIL import Image

    with Image.open(path) as im:
        return getattr(im, "text", {}).get("Source")


def set_style() -> None:
    """The book's plotting style (seaborn ``whitegrid``, readable font sizes)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold"})


#: Outline colours of the ground-truth sources (source 1, 2, 3, 4), readable on photos and icons.
SOURCE_COLOURS = ("#ff2d2d", "#2dd4ff", "#ffe12d", "#b62dff")
#: The colour map of every localization map in the book (0 = lowest similarity, 1 = highest,
#: after per-map min-max normalisation).
MAP_CMAP = "jet"


def show_frame(ax, image, masks=None, title: str | None = None) -> None:
    """Draw a frame ``image [3, H, W]`` (float in [0, 1]) with the outlines of ``masks [S, H, W]``
    in :data:`SOURCE_COLOURS` order."""
    import numpy as np

    img = image.permute(1, 2, 0).numpy() if hasattr(image, "permute") else np.asarray(image)
    ax.imshow(img)
    for k, m in enumerate(masks if masks is not None else []):
        m = m.numpy() if hasattr(m, "numpy") else np.asarray(m)
        if m.any():
            ax.contour(m.astype(float), levels=[0.5], colors=[SOURCE_COLOURS[k % len(SOURCE_COLOURS)]], linewidths=1.4)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(False)
    ax.axis("off")


def qualitative_grid(samples: list[dict], methods: list[str], title: str | None = None) -> Figure:
    """The paper's Figure 6 layout: one row per (sample, source); columns: the frame with every
    source's outline, then the map each method gives that source (outlined: the source's mask).

    Args:
        samples: dicts with ``image [3, H, W]``, ``masks [S, H, W]``, ``class_names`` (S), and
            ``maps``: ``{method: [S, H, W]}`` (min-max normalised) and ``ap``: ``{method: [S]}``.
        methods: the column order.

    Returns:
        the figure (rows = sum of sources, columns = 1 + len(methods)).
    """
    rows = [(i, k) for i, s in enumerate(samples) for k in range(len(s["class_names"]))]
    wide = samples[0]["image"].shape[-1] / samples[0]["image"].shape[-2]
    fig, axes = plt.subplots(len(rows), 1 + len(methods), figsize=(2.4 * wide * (1 + len(methods)), 2.5 * len(rows)), squeeze=False)
    for r, (i, k) in enumerate(rows):
        s = samples[i]
        colour = SOURCE_COLOURS[k % len(SOURCE_COLOURS)]
        show_frame(axes[r, 0], s["image"], s["masks"], f"{s.get('label', '')} source {k + 1}: {s['class_names'][k]}".strip())
        axes[r, 0].title.set_color(colour)
        img = s["image"].permute(1, 2, 0).numpy()
        for c, m in enumerate(methods):
            ax = axes[r, c + 1]
            ax.imshow(img)
            ax.imshow(s["maps"][m][k].numpy(), cmap=MAP_CMAP, alpha=0.5, vmin=0, vmax=1)
            ax.contour(s["masks"][k].numpy().astype(float), levels=[0.5], colors="white", linewidths=1.2)
            ax.set_title(f"{m}: AP {s['ap'][m][k]:.2f}", fontsize=9)
            ax.grid(False)
            ax.axis("off")
    # the title gets its own band above the column headers (two-line axes titles included)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.8 / fig.get_figheight()) if title else None)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.2 / fig.get_figheight(), va="top")
    return fig


def gradient_heatmap(grads, by: str = "design") -> Figure:
    """Heatmaps of gradient norms (one panel per value of ``by``): rows ``module``, columns ``loss``,
    colour ``log10(grad_norm)`` on one shared scale, each cell annotated with its value; a zero norm
    (no path from that loss to that module) is left blank. ``grads``: the long table of
    :func:`avgnbook.diagnostics.avgn_gradient_table` with a ``by`` column."""
    import numpy as np

    panels = list(dict.fromkeys(grads[by]))
    modules = list(dict.fromkeys(grads["module"]))
    losses = list(dict.fromkeys(grads["loss"]))
    vals = grads["grad_norm"].to_numpy(dtype=float)
    pos = vals[vals > 0]
    lo, hi = (np.log10(pos.min()), np.log10(pos.max())) if len(pos) else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.2, 0.42 * len(modules) + 1.6), squeeze=False)
    im = None
    for ax, name in zip(axes[0], panels):
        sub = grads[grads[by] == name].pivot_table(index="module", columns="loss", values="grad_norm").reindex(index=modules, columns=losses)
        m = sub.to_numpy(dtype=float)
        logm = np.where(m > 0, np.log10(np.where(m > 0, m, 1.0)), np.nan)
        im = ax.imshow(logm, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        for (r, c), v in np.ndenumerate(m):
            if v > 0:
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=8, color="white" if logm[r, c] < (lo + hi) / 2 else "black")
        ax.set_xticks(range(len(losses)), losses, rotation=30, ha="right")
        ax.set_yticks(range(len(modules)), modules if ax is axes[0][0] else [""] * len(modules))
        ax.set_title(str(name))
        ax.grid(False)
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 gradient norm", shrink=0.9)
    return fig
