"""Run profiles: one named bundle of settings per compute budget.

Notebooks and the command line select a profile by name (``smoke`` for CI, ``cpu`` for the book's
default on a 2-core machine, ``gpu`` for the paper's settings); nothing about sizes is hard-coded in a
notebook. Each sub-config is a frozen dataclass owned by the module that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from avgn.data.config import DATA_PROFILES, DataConfig

PROFILES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol settings (see :mod:`avgn.metrics`)."""

    mask_size: int = 224
    binarize_rule: str = "top_fraction"
    binarize_value: float = 0.5
    iou_threshold_single: float = 0.5
    iou_threshold_multi: float = 0.3


@dataclass(frozen=True)
class Profile:
    """All settings for one compute budget."""

    name: str
    data: DataConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo_samples: int = 400  # samples in the synthetic protocol demonstrations (chapter 00)
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds of the comparison tables (mean ± std)

    def with_overrides(self, **overrides: Any) -> "Profile":
        """Return a copy with top-level fields replaced (sub-configs are replaced whole)."""
        return replace(self, **overrides)


def get_profile(name: str) -> Profile:
    """Return the :class:`Profile` called ``name`` (one of :data:`PROFILES`).

    Raises:
        ValueError: if ``name`` is not a known profile.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    demo = {"smoke": 24, "cpu": 400, "gpu": 2000}[name]
    seeds = (0,) if name == "smoke" else (0, 1, 2)
    return Profile(name=name, data=DATA_PROFILES[name], demo_samples=demo, seeds=seeds)
