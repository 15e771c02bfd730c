"""The non-learned references, through the same interface as the learned methods.

* ``centre`` — a Gaussian bump at the centre of every 224x224 frame (a ``concat`` frame gets one bump
  per half), at feature resolution; one map for every source (``shared``).
* ``object`` — the ImageNet-feature object prior (mean absolute activation of the frozen
  backbone's features, :func:`avgn.models.object_prior`): read from the cached ``visual_feats`` of
  a batch, or computed by a frozen backbone (:meth:`ObjectPrior.reference_model`) from its images.
* ``perfect`` — the protocol's ceiling: every source's ground-truth mask, at full resolution, as its
  own map, scored as slots (each mask is matched to its source).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from avgn.methods.base import Method
from avgn.methods.registry import register_method
from avgn.models.priors import centre_prior, object_prior

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import InputConfig, Profile

__all__ = ["Reference", "CentrePrior", "ObjectPrior", "PerfectMap"]


class Reference(Method):
    """A non-learned map: no configuration, no training; :meth:`predict_batch` reads the batch."""

    learned = False
    #: backbone stride (maps at feature resolution: ``H / stride`` x ``W / stride``)
    stride: ClassVar[int] = 32

    def default_config(self, profile: "Profile") -> None:
        return None

    def build(self, cfg: Any) -> nn.Module:
        raise TypeError(f"the {self.label} is not a trained model; use reference_model()")

    def reference_model(self, inputs: "InputConfig", cached_features: bool) -> nn.Module | None:
        """The module :meth:`predict_batch` needs (None: none)."""
        return None

    def feature_hw(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        """``(h, w)`` of the maps of ``batch``: its cached features' size, or its frames' over the stride."""
        if "visual_feats" in batch:
            return tuple(batch["visual_feats"].shape[-2:])  # type: ignore[return-value]
        h, w = batch["image"].shape[-2:]
        return math.ceil(h / self.stride), math.ceil(w / self.stride)


@register_method
class CentrePrior(Reference):
    name = "centre"
    label = "centre prior"
    kind = "shared"
    #: the bump's standard deviation as a fraction of the frame side
    sigma: ClassVar[float] = 0.25

    def predict_batch(self, model: nn.Module | None, batch: Mapping[str, Any], device: torch.device,
                      bf16: bool = False, channels_last: bool = False) -> dict[str, Tensor]:
        b = batch["spec"].shape[0]
        h, w = self.feature_hw(batch)
        frames = 2 if w == 2 * h else 1  # concat: one bump per frame
        m = centre_prior(h, w // frames, sigma=self.sigma).repeat(1, frames)
        return {"maps": m.expand(b, 1, h, w).clone()}

    def value_label(self, model: nn.Module | None) -> str:
        return "centre bump"


@register_method
class ObjectPrior(Reference):
    name = "object"
    label = "object prior"
    kind = "shared"

    def reference_model(self, inputs: "InputConfig", cached_features: bool) -> nn.Module | None:
        if cached_features:
            return None
        from avgn.models.encoders import VisualEncoder

        return VisualEncoder(inputs.features.encoder_config()).eval()

    def predict_batch(self, model: nn.Module | None, batch: Mapping[str, Any], device: torch.device,
                      bf16: bool = False, channels_last: bool = False) -> dict[str, Tensor]:
        if "visual_feats" in batch:
            feats = batch["visual_feats"].float()
        else:
            if model is None:
                raise ValueError("the object prior needs cached visual_feats or a backbone (reference_model)")
            feats = model.backbone_features(batch["image"].to(device)).float().cpu()
        return {"maps": object_prior(feats)}

    def value_label(self, model: nn.Module | None) -> str:
        return "mean |backbone activation| (object prior)"


@register_method
class PerfectMap(Reference):
    name = "perfect"
    label = "perfect map"
    kind = "slots"

    def predict_batch(self, model: nn.Module | None, batch: Mapping[str, Any], device: torch.device,
                      bf16: bool = False, channels_last: bool = False) -> dict[str, Tensor]:
        return {"maps": batch["masks"].float()}

    def value_label(self, model: nn.Module | None) -> str:
        return "ground-truth mask"
