"""Mix-and-Localize (Hu et al., CVPR 2022) as a method: ``K`` class-agnostic slot maps
(:class:`avgn.models.MixAndLocalize`), matched to the sources one-to-one by the evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from torch import Tensor, nn

from avgn.methods.base import Method
from avgn.methods.registry import register_method
from avgn.models.config import MALConfig
from avgn.models.mal import MixAndLocalize

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import Profile

__all__ = ["MALMethod"]

#: The public code's embedding width, which the gpu profile keeps (smaller profiles shrink it).
PUBLIC_DIM = 128


@register_method
class MALMethod(Method):
    """Cycle-consistent random walk between audio slots and image regions."""

    name = "mal"
    label = "Mix-and-Localize"
    kind = "slots"
    config_cls = MALConfig

    def default_config(self, profile: "Profile") -> MALConfig:
        d = min(profile.sizes.dim, PUBLIC_DIM)
        return MALConfig(dim=d, hidden=d, encoder=profile.encoder)

    def build(self, cfg: MALConfig) -> MixAndLocalize:
        return MixAndLocalize(cfg)

    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return model.loss(outputs)

    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"maps": model.localize(outputs)}  # [B, K, h, w]

    def value_label(self, model: nn.Module | None) -> str:
        return "cos(slot$_k$, f$_p$): audio slot vs. pixel feature"
