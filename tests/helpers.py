"""Helpers shared by the test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

from typing import Any

from avgn.experiment import Experiment, get_experiment
from avgn.methods.avgn import AVGNConfig
from avgn.models.config import EncoderConfig

__all__ = ["tiny_experiment", "small_avgn", "SMALL_D", "SMALL_C"]

#: width and number of classes of :func:`small_avgn`
SMALL_D, SMALL_C = 32, 5


def small_avgn(depth: int = 1, **kw: Any) -> AVGNConfig:
    """A unit-test-sized AVGN configuration (32-d, 5 classes, 4 heads, an eighth-width audio ResNet)."""
    base: dict[str, Any] = dict(num_classes=SMALL_C, dim=SMALL_D, depth=depth, heads=4, mlp_ratio=2.0, encoder=EncoderConfig(audio_width=0.125))
    base.update(kw)
    return AVGNConfig(**base)


def tiny_experiment(method: str = "avgn", **extra: Any) -> Experiment:
    """A seconds-sized experiment of ``method`` on the smoke profile (16-d models, 3x3 feature maps,
    2 epochs of a few dozen items); ``extra`` are further dotted overrides."""
    o: dict[str, Any] = {
        "train.epochs": 2, "train.batch_size": 6, "train.solo_items": 12, "train.concat_items": 6, "train.scene_items": 6,
        "train.num_workers": 0, "train.lr": 1e-3, "train.schedule": "cosine", "train.warmup_epochs": 0.5,
        "model.dim": 16, "model.encoder.audio_width": 0.125,
        "inputs.eval_batch_size": 8, "inputs.eval_workers": 0,
        "inputs.features.image_size": 96,  # 3x3 feature maps: cheap to cache
    }
    if method == "avgn":
        o.update({"model.heads": 2})
    if method == "mal":
        o.update({"model.hidden": 16})
    o.update(extra)
    return get_experiment(method, "smoke", **o)


def tiny_plan():
    """A run plan of four runs (AVGN, EZ-VSL, EZ-VSL + object prior on EZ-VSL's weights, the centre
    prior), each evaluated on the ``val`` split; with :func:`tiny_experiment` standing for every
    planned experiment (the ``tiny_store`` fixture) they store in seconds."""
    from avgn.runs import Variant
    from avgn.store.plan import Evaluation, PlannedRun

    val = (Evaluation("val", "val"),)
    runs = [
        PlannedRun(Variant("AVGN", "avgn"), 0, "smoke", val, ("03",)),
        PlannedRun(Variant("EZ-VSL", "ezvsl"), 0, "smoke", val, ("03",)),
        PlannedRun(Variant("EZ-VSL + object prior", "ezvsl", eval_overrides=(("object_prior_alpha", 0.4),), name="ezvsl-ogl"), 0, "smoke",
                   val, ("03",)),
        PlannedRun(None, -1, "smoke", val, ("03",), reference="centre"),
    ]
    return {r.key: r for r in runs}
