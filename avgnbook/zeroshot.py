"""Zero-shot localization: classes never seen in training, localized from their names.

The benchmark holds three classes out (``heldout_classes`` in ``build.json``; owl, frog, elephant by
default): they never sound, nor even appear, in ``train`` / ``val``, and only their objects sound in
the ``test_zeroshot`` split. Every run trains on ``train`` only, so every run is trained without
them; what differs is how a method can name them at test time (:func:`zeroshot_scoring`):

* ``text`` (T-VSL): a class is an anchor computed from its name, so the held-out classes get maps
  and audio probabilities from their names alone; the training losses never saw their anchors
  (``train_classes``, checked by :func:`check_unseen`).
* ``tokens`` (AVGN): a class is a learned token. The held-out classes' tokens exist (one per class
  of the build) but never had a sounding example: their presence target was always 0 and no audio
  was ever grouped to them as a source. ``oracle`` scores the map of that untrained token;
  ``predicted`` selects from presence probabilities trained towards 0 for those classes. AVGN
  cannot name an unseen class; the numbers measure what its untrained tokens give.
* ``agnostic`` (EZ-VSL, Mix-and-Localize, the priors): maps do not depend on class names; they are
  scored as on any split.

:func:`evaluate_zeroshot` evaluates a trained run on every ``test_zeroshot`` set (``eval_test_zeroshot.*``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avgn.data.manifest import load_build_info
from avgn.evaluate import MODES, evaluate_run, list_sets
from avgn.methods import get_method

__all__ = ["ZEROSHOT_SPLIT", "heldout_classes", "zeroshot_scoring", "check_unseen", "evaluate_zeroshot"]

ZEROSHOT_SPLIT = "test_zeroshot"


def heldout_classes(data_dir: str | Path) -> list[str]:
    """The build's held-out classes (those that sound in ``test_zeroshot``)."""
    info = load_build_info(data_dir)
    return list(info["split_classes"].get(ZEROSHOT_SPLIT) or info["heldout_classes"])


def zeroshot_scoring(method: str) -> str:
    """How ``method`` names a held-out class: ``text`` (an anchor from its name), ``tokens`` (a
    learned class token that never saw the class) or ``agnostic`` (no class in the map)."""
    m = get_method(method)
    if m.kind != "class_aware":
        return "agnostic"
    return "text" if m.names_classes else "tokens"


def check_unseen(run_dir: str | Path) -> dict[str, Any]:
    """What a run's training saw of the held-out classes: ``{"heldout", "train_classes", "leaked"}``
    (``leaked``: held-out classes among the training classes: must be empty). Raises ValueError
    if any leaked."""
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    info = load_build_info(cfg["data_dir"])
    held = list(info["heldout_classes"])
    model = cfg["experiment"]["model"]
    train = list(model.get("train_classes") or info["split_classes"]["train"])
    leaked = sorted(set(held) & set(train))
    if leaked:
        raise ValueError(f"{run_dir} was trained with held-out classes {leaked}: not a zero-shot run")
    return {"heldout": held, "train_classes": train, "leaked": leaked}


def evaluate_zeroshot(run_dir: str | Path, *, data_dir: str | Path | None = None, device: str = "auto", write: bool = True,
                      progress: bool = False) -> dict[str, Any]:
    """Evaluate a trained run on every ``test_zeroshot`` set in both modes (writes
    ``eval_test_zeroshot.*`` into the run folder, the files the run store keeps
    for that split); the payload adds ``heldout``, ``scoring`` (:func:`zeroshot_scoring`)."""
    seen = check_unseen(run_dir)
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    dd = data_dir if data_dir is not None else cfg["data_dir"]
    sets = list_sets(dd, ZEROSHOT_SPLIT)
    if not sets:
        raise ValueError(f"the build at {dd} has no {ZEROSHOT_SPLIT} sets")
    out = evaluate_run(run_dir, ZEROSHOT_SPLIT, sets=sets, data_dir=data_dir, device=device, modes=MODES, write=write,
                       progress=progress)
    out.update(heldout=seen["heldout"], scoring=zeroshot_scoring(cfg["method"]))
    return out
