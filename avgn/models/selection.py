"""Which classes' maps a class-aware method shows: the ground truth's, or the ones it hears
(:func:`select_sources`; the evaluation's ``oracle`` and ``predicted`` modes)."""

from __future__ import annotations

import torch

__all__ = ["select_sources"]


def select_sources(
    maps: torch.Tensor,
    mode: str = "oracle",
    gt_classes: torch.Tensor | None = None,
    audio_probs: torch.Tensor | None = None,
    threshold: float = 0.5,
    max_sources: int | None = None,
    min_sources: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick per-sample source maps out of all-class maps ``[B, C, h, w]``.

    Args:
        mode: ``oracle`` = the ground-truth sounding classes (``gt_classes``: multi-hot ``[B, C]`` or
            indices ``[B, S]`` padded with -1); ``predicted`` = classes with
            ``audio_probs [B, C] >= threshold``, most probable first; if fewer than ``min_sources``
            pass, the top ``min_sources`` are taken anyway. ``min_sources=0`` keeps exactly the
            classes that pass, so a sample's selection may be empty ("nothing sounds": the
            evaluation's ``predicted`` mode and ``avgn localize`` use it); the outputs then still
            have at least one column, all padding for such a sample.
        max_sources: keep at most this many per sample (most probable first for ``predicted``; the
            given order for ``oracle``).

    Returns:
        ``(selected [B, S, h, w], classes [B, S] padded with -1, mask [B, S])``; padded maps are 0.
    """
    bsz, num_classes = maps.shape[:2]
    if mode == "oracle":
        if gt_classes is None:
            raise ValueError("mode='oracle' needs gt_classes")
        gt = gt_classes.to(maps.device)
        if gt.dim() == 2 and gt.shape[1] == num_classes and gt.dtype != torch.long:
            from avgn.losses import sources_from_multihot

            classes, mask = sources_from_multihot(gt)
        else:
            classes = gt.long()
            mask = classes >= 0
    elif mode == "predicted":
        if audio_probs is None:
            raise ValueError("mode='predicted' needs audio_probs")
        probs = audio_probs.to(maps.device)
        order = probs.argsort(dim=1, descending=True)
        sorted_p = probs.gather(1, order)
        rank = torch.arange(num_classes, device=maps.device)[None]
        mask = (sorted_p >= threshold) | (rank < min_sources)
        classes = torch.where(mask, order, torch.full_like(order, -1))
        s = max(int(mask.sum(dim=1).max().item()), 1)
        classes, mask = classes[:, :s], mask[:, :s]
    else:
        raise ValueError(f"mode must be 'oracle' or 'predicted', got {mode!r}")
    if max_sources is not None:
        classes, mask = classes[:, :max_sources], mask[:, :max_sources]
    safe = classes.clamp_min(0)
    selected = maps[torch.arange(bsz, device=maps.device)[:, None], safe]
    selected = selected * mask[:, :, None, None].to(selected.dtype)
    return selected, classes, mask
