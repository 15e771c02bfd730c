"""DSOL (Hu, Qian, Wen, Sun, Wang, Wang, NeurIPS 2020) on this project's encoders.

* Audio-visual map ``av = sigmoid(w * cos(v_p, a))`` (``[B, h, w]``) between the L2-normalised visual
  projection ``v`` ``[B, D, h, w]`` and the audio embedding ``a`` ``[B, D]``; ``w`` is learned (init 5).
* A dictionary of object categories ``[K, C']`` (buffer): the K-means centres of the backbone features
  of localised objects (:mod:`avgn.clusters`), set by the method between epochs; ``cluster_to_class``
  ``[K]`` (buffer) maps the clusters onto the label set (Hungarian, on validation).
* Pseudo-label heads: ``audio_head`` (max-pooled audio trunk -> K) and ``visual_head`` (average-pooled
  backbone features -> K).
* Class-aware maps ``[B, K, h, w]`` = ``(s * cos(f_p, d_k) + b) * av_p`` with a learned affine
  ``(s, b)`` — the public code's 1x1x1 Conv3d over the ``K`` similarity maps.

The losses live in :mod:`avgn.methods.dsol` (they depend on the stage).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avgn.models.config import DSOLConfig
from avgn.models.encoders import AudioEncoder, VisualEncoder

__all__ = ["DSOL"]


class DSOL(nn.Module):
    """``forward`` -> dict (see the module docstring); ``has_dictionary`` once clusters exist."""

    def __init__(self, cfg: DSOLConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DSOLConfig()
        self.cfg = cfg
        self.visual = VisualEncoder(cfg.encoder)
        self.audio = AudioEncoder(cfg.encoder, spatial=False)
        self.scale = nn.Parameter(torch.tensor(float(cfg.map_scale_init)))
        k = cfg.k
        self.audio_head = nn.Linear(self.audio.out_channels, k)
        self.visual_head = nn.Linear(self.visual.backbone_channels, k)
        self.class_affine = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.register_buffer("dictionary", torch.zeros(k, self.visual.backbone_channels))
        self.register_buffer("cluster_to_class", torch.full((k,), -1, dtype=torch.long))
        if cfg.stage == 2:  # the stage-1 audio classifier gives the target distribution: frozen
            for p in self.audio_head.parameters():
                p.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"stage={self.cfg.stage}, clusters={self.cfg.k}, classes={self.cfg.num_classes}, region_threshold={self.cfg.region_threshold}"

    @property
    def has_dictionary(self) -> bool:
        return bool(self.dictionary.abs().sum() > 0)

    def set_dictionary(self, centres: torch.Tensor) -> None:
        """Install K-means centres ``[K, C']`` as the dictionary."""
        if centres.shape != self.dictionary.shape:
            raise ValueError(f"dictionary must be {tuple(self.dictionary.shape)}, got {tuple(centres.shape)}")
        self.dictionary.copy_(centres.to(self.dictionary))

    def set_mapping(self, cluster_to_class: torch.Tensor) -> None:
        """Install the cluster -> class mapping ``[K]`` (-1: unmatched)."""
        self.cluster_to_class.copy_(cluster_to_class.to(self.cluster_to_class))

    def av_map(self, audio_emb: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """``sigmoid(w cos(v_p, a))`` ``[B, h, w]`` for aligned rows of ``audio_emb`` and ``visual``."""
        return torch.sigmoid(self.scale * torch.einsum("bd,bdhw->bhw", audio_emb, visual))

    def forward(self, image: torch.Tensor | None = None, spec: torch.Tensor | None = None,
                visual_feats: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if spec is None:
            raise ValueError("DSOL needs a spectrogram spec=[B, 1, F, T]")
        vmap, vback = self.visual(image=image, feats=visual_feats)
        _, pooled = self.audio.trunk_pooled(spec)
        a = F.normalize(self.audio.proj(self.audio.dropout(pooled)), dim=1)
        av = self.av_map(a, vmap)
        out = {"audio_emb": a, "visual_map_feats": vmap, "visual_backbone_feats": vback, "av_map": av,
               "audio_cluster_logits": self.audio_head(pooled), "visual_cluster_logits": self.visual_head(vback.float().mean(dim=(2, 3)))}
        sim = torch.einsum("bchw,kc->bkhw", F.normalize(vback.float(), dim=1), F.normalize(self.dictionary, dim=1))
        out["class_maps"] = (self.class_affine[0] * sim + self.class_affine[1]) * av[:, None]  # [B, K, h, w]
        return out
