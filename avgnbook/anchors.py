"""What a text-anchored run makes of its anchors (chapter 9).

* :func:`anchor_similarity`: the cosine similarities of the class anchors (a ``C x C`` table).
* :func:`anchor_embedding_tsne`: a t-SNE of a run's anchors together with its class-aware audio and
  visual features of the sounding sources of some evaluation sets (classes never trained on
  marked), as one long table for a scatter plot.
* :func:`anchor_naming`: per class, how often a sounding source's class-aware feature is nearer its
  own anchor than any other (the class the feature names), and the cosines behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from avgnbook.analysis import class_embeddings
from avgn.runs import load_trained_model
from avgn.text import DEFAULT_TEMPLATES, text_anchors

__all__ = ["anchor_similarity", "anchor_embedding_tsne", "anchor_naming"]


def anchor_similarity(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, cache_dir: str | Path | None = None):
    """``pandas.DataFrame`` ``[C, C]`` of the cosine similarities of the anchors of ``class_names``."""
    import pandas as pd

    a = text_anchors(class_names, templates, cache_dir).numpy()
    return pd.DataFrame(a @ a.T, index=list(class_names), columns=list(class_names))


def _run_features(run_dir: str | Path, sets: Sequence[str], max_items: int | None, device: str):
    """``(anchors [C, E], audio [M, E], visual [M, E], labels [M], class names, seen names)``, rows unit-norm."""
    model, exp, _ = load_trained_model(run_dir, device=device)
    if not hasattr(model, "anchors"):
        raise ValueError(f"{run_dir} is a {exp.method!r} run: it has no text anchors")
    aud, vis, labels, _ = class_embeddings(run_dir, sets, device=device, max_items=max_items)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

    anchors = unit(model.anchors.float().cpu().numpy())
    return anchors, unit(aud), unit(vis), labels, list(exp.model.class_names), set(exp.model.seen_classes)


def anchor_naming(run_dir: str | Path, sets: Sequence[str], *, max_items: int | None = None, device: str = "cpu"):
    """Per class of the sounding sources of ``sets``: ``sources``, ``seen``, ``audio_named`` /
    ``visual_named`` (share of sources whose class-aware feature is nearest its own anchor among all
    anchors), ``audio_cos_own`` and ``audio_cos_other`` (mean cosine to its own anchor and to the
    nearest other one). A ``pandas.DataFrame``, one row per class."""
    import pandas as pd

    anchors, aud, vis, labels, names, seen = _run_features(run_dir, sets, max_items, device)
    rows = []
    for c in sorted(set(labels.tolist())):
        sel = labels == c
        ca, cv = aud[sel] @ anchors.T, vis[sel] @ anchors.T  # [m, C]
        other = np.delete(ca, c, axis=1).max(1)
        rows.append({"class": names[c], "seen": names[c] in seen, "sources": int(sel.sum()),
                     "audio_named": float((ca.argmax(1) == c).mean()), "visual_named": float((cv.argmax(1) == c).mean()),
                     "audio_cos_own": float(ca[:, c].mean()), "audio_cos_other": float(other.mean())})
    return pd.DataFrame(rows)


def anchor_embedding_tsne(run_dir: str | Path, sets: Sequence[str], *, max_items: int | None = None, device: str = "cpu",
                          seed: int = 0, perplexity: float = 30.0):
    """t-SNE (scikit-learn, cosine metric, PCA init, ``random_state=seed``) of a text-anchored run's
    anchors ``[C, E]`` and of its class-aware audio and visual features of every sounding source of
    ``sets`` (:func:`avgnbook.analysis.class_embeddings`).

    Returns a ``pandas.DataFrame`` with columns ``x, y, kind`` (``anchor`` | ``audio`` | ``visual``),
    ``class`` and ``seen`` (the class was among the run's training classes)."""
    import pandas as pd
    from sklearn.manifold import TSNE

    anchors, aud, vis, labels, names, seen = _run_features(run_dir, sets, max_items, device)
    pts = np.concatenate([anchors, aud, vis])
    kinds = ["anchor"] * len(anchors) + ["audio"] * len(aud) + ["visual"] * len(vis)
    cls = names + [names[c] for c in labels] * 2
    perp = float(min(perplexity, max(2.0, (len(pts) - 1) / 3)))
    xy = TSNE(n_components=2, metric="cosine", init="pca", random_state=seed, perplexity=perp).fit_transform(pts)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "kind": kinds, "class": cls, "seen": [c in seen for c in cls]})
