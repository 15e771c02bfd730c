"""Dataset-size profiles for the embedded benchmark (owned by :mod:`avgn.data.build`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    """How the embedded benchmark is built. One instance per profile in :data:`DATA_PROFILES`."""

    image_size: int = 224
    sample_rate: int = 16000
    clip_seconds: float = 3.0


DATA_PROFILES: dict[str, DataConfig] = {
    "smoke": DataConfig(),
    "cpu": DataConfig(),
    "gpu": DataConfig(),
}
