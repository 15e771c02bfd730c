"""EZ-VSL (Mo & Morgado, ECCV 2022) as a method: one shared map per mixture (:class:`avgn.models.EZVSL`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from torch import Tensor, nn

from avgn.methods.base import Method
from avgn.methods.registry import register_method
from avgn.models.config import EZVSLConfig
from avgn.models.ezvsl import EZVSL

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import Profile

__all__ = ["EZVSLMethod"]


@register_method
class EZVSLMethod(Method):
    """Global audio vector, max-MIL contrastive loss; the map (optionally fused with the object
    prior, ``object_prior_alpha``) is used for every source."""

    name = "ezvsl"
    label = "EZ-VSL"
    kind = "shared"
    config_cls = EZVSLConfig

    def default_config(self, profile: "Profile") -> EZVSLConfig:
        return EZVSLConfig(dim=profile.sizes.dim, encoder=profile.encoder)

    def build(self, cfg: EZVSLConfig) -> EZVSL:
        return EZVSL(cfg)

    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return model.loss(outputs)

    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"maps": model.localize(outputs)}  # [B, 1, h, w]

    def value_label(self, model: nn.Module | None) -> str:
        if model is not None and getattr(model.cfg, "object_prior_alpha", None) is not None:
            return "audio-visual similarity fused with the object prior"
        return "cos(audio, f$_p$): audio embedding vs. pixel feature"
