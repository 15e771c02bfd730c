"""EZ-VSL (Mo & Morgado, ECCV 2022), the single-source baseline AVGN builds on.

Same encoders as AVGN: L2-normalised visual map ``[B, D, h, w]`` and one global audio vector
``[B, D]``. Training: max-MIL contrastive loss (:func:`avgn.losses.maxmil_contrastive_loss`).
Localisation: ``cos(audio, f_p)`` per position; optionally the test script's "OGL" fusion with the
object prior of the (pretrained) backbone features, ``alpha * av + (1 - alpha) * prior``
(:func:`avgn.models.priors.fuse_with_prior`). The prior is computed from this model's backbone
features: with a frozen pretrained backbone (or cached features) that is exactly the public
"pretrained ResNet-18" prior; with a fine-tuned backbone it is the fine-tuned one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avgn.losses import maxmil_contrastive_loss
from avgn.models.config import EZVSLConfig
from avgn.models.encoders import AudioEncoder, VisualEncoder
from avgn.models.priors import fuse_with_prior, object_prior

__all__ = ["EZVSL"]


class EZVSL(nn.Module):
    """EZ-VSL. ``forward`` -> dict; ``loss(outputs)``; ``localize(outputs)`` -> ``[B, 1, h, w]``."""

    def __init__(self, cfg: EZVSLConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or EZVSLConfig()
        self.cfg = cfg
        self.visual = VisualEncoder(cfg.encoder)
        self.audio = AudioEncoder(cfg.encoder, spatial=False)
        self.audio_norm = nn.BatchNorm1d(cfg.dim) if cfg.audio_norm == "batchnorm" else nn.Identity()

    def extra_repr(self) -> str:
        return f"audio_norm={self.cfg.audio_norm}, tau={self.cfg.tau}, object_prior_alpha={self.cfg.object_prior_alpha}"

    def embed_audio(self, spec: torch.Tensor) -> torch.Tensor:
        """``[B, 1, F, T]`` -> ``[B, D]``: ``L2(norm(linear(maxpool(trunk(spec)))))``; ``norm`` is
        ``BatchNorm1d`` (``audio_norm='batchnorm'``) or the identity (public code)."""
        _, pooled = self.audio.trunk_pooled(spec)
        return F.normalize(self.audio_norm(self.audio.proj(self.audio.dropout(pooled))), dim=1)

    def forward(
        self,
        image: torch.Tensor | None = None,
        spec: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``audio_emb`` ``[B, D]`` (L2), ``visual_map_feats`` ``[B, D, h, w]`` (L2), ``visual_backbone_feats``."""
        if spec is None:
            raise ValueError("EZVSL needs a spectrogram spec=[B, 1, F, T]")
        vmap, vback = self.visual(image=image, feats=visual_feats)
        a = self.embed_audio(spec)
        return {"audio_emb": a, "visual_map_feats": vmap, "visual_backbone_feats": vback}

    def loss(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, _ = maxmil_contrastive_loss(outputs["audio_emb"], outputs["visual_map_feats"], self.cfg.tau)
        return loss, {"loc": loss.detach(), "total": loss.detach()}

    def localize(self, outputs: dict[str, torch.Tensor], alpha: float | None = None) -> torch.Tensor:
        """``[B, 1, h, w]``: ``cos(audio, f_p)``; fused with the object prior if ``alpha`` (or
        ``cfg.object_prior_alpha``) is set (then in ``[0, 1]``)."""
        av = torch.einsum("bd,bdhw->bhw", outputs["audio_emb"], outputs["visual_map_feats"]).unsqueeze(1)
        alpha = self.cfg.object_prior_alpha if alpha is None else alpha
        if alpha is None:
            return av
        prior = object_prior(outputs["visual_backbone_feats"], normalize=self.cfg.prior_norm == "minmax")
        return fuse_with_prior(av, prior, alpha, norm=self.cfg.prior_norm, prior_max=self.cfg.prior_max)
