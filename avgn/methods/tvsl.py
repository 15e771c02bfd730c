"""T-VSL (Mahmud, Tian & Marculescu, CVPR 2024) as a method: class-aware maps from text anchors.

One forward pass gives the maps of every class whose name has an anchor (:meth:`avgn.models.tvsl.TVSL.localize`)
and the multi-label probabilities of the audio against all anchors (``audio_probs``). Two
source-selection modes: ``oracle`` (the ground-truth class names: what the public code does) and
``predicted`` (the classes the audio names: the paper's description), thresholded like AVGN's
presence. Because classes are anchors, not learned tokens, classes never seen in training get maps
and probabilities from their names alone (zero-shot, :mod:`avgnbook.zeroshot`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from avgn.methods.avgn import embedding_dependence_summary
from avgn.methods.base import Method
from avgn.methods.registry import register_method
from avgn.models.config import TVSLConfig
from avgn.models.tvsl import TVSL

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import Profile

__all__ = ["TVSLMethod"]


@register_method
class TVSLMethod(Method):
    """T-VSL: text-conditioned token weighting, four losses (:class:`avgn.models.tvsl.TVSL`)."""

    name = "tvsl"
    label = "T-VSL (MiniLM anchors)"
    kind = "class_aware"
    modes = ("oracle", "predicted")
    names_classes = True
    config_cls = TVSLConfig

    def default_config(self, profile: "Profile") -> TVSLConfig:
        return TVSLConfig(dim=profile.sizes.dim, encoder=profile.encoder)

    def with_num_classes(self, cfg: TVSLConfig, num_classes: int) -> TVSLConfig:
        if cfg.num_classes != num_classes:
            raise ValueError(
                f"T-VSL needs the class names, not only their number ({num_classes}); use for_build(cfg, build_info) "
                "or set class_names"
            )
        return cfg

    def for_build(self, cfg: TVSLConfig, build_info: Mapping[str, Any]) -> TVSLConfig:
        """The build's class names (one anchor each) and its training classes (the only anchors the
        losses see: the held-out zero-shot classes stay unseen)."""
        names = tuple(build_info["classes"])
        train = build_info.get("split_classes", {}).get("train")
        seen = tuple(c for c in names if c in train) if train is not None else None
        if cfg.class_names == names and cfg.train_classes == seen:
            return cfg
        return replace(cfg, class_names=names, train_classes=seen)

    def build(self, cfg: TVSLConfig) -> TVSL:
        return TVSL(cfg)

    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return model.loss(outputs, batch["labels"].to(outputs["ml_logits"].device))

    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        probs = torch.sigmoid(outputs["ml_logits"].float())  # [B, C], against every anchor
        cand = model.cfg.candidate_classes
        if cand is not None:  # selection restricted to the candidates (e.g. the held-out classes)
            keep = torch.tensor([c in cand for c in model.cfg.class_names], device=probs.device)
            probs = probs * keep
        return {
            "maps": model.localize(outputs),  # [B, C, h, w]
            "audio_probs": probs,
            "token_pred": model.text_logits(outputs["audio_emb"].float(), outputs["anchors"].float()).argmax(-1),  # [B, C]
        }

    def epoch_diagnostics(self, model: nn.Module, val_sets: Sequence[Any], device: torch.device) -> dict[str, Any]:
        """``embedding_dependence``: per modality, the mean over classes of the cosine between a
        class feature's mean where the class sounds and where it does not, on the multi-source
        validation sets (1 = the class feature ignores the input: the text-conditioned pooling
        alone already points it at its anchor)."""
        multi = [es for es in val_sets if es.name.n_sources > 1] or list(val_sets)
        return {"embedding_dependence": embedding_dependence_summary(model, [b for es in multi for b in es.batches()], device)}

    def value_label(self, model: nn.Module | None) -> str:
        return "cos(h$^v$(x$^v_p$), class-c audio feature) in the text space"
