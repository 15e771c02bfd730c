"""Training losses of AVGN and EZ-VSL.

* :func:`token_ce_loss` — every learned class token is classified as its own class by a shared linear
  classifier: ``CE(fc(tokens) [C, C], arange(C))``.
* :func:`presence_bce_loss` — per-class presence from the class-aware embeddings (audio: multi-hot
  of the mixture's classes; vision: classes visible in the frame), BCE with logits, mean over B*C.
* :func:`maxmil_contrastive_loss` — EZ-VSL: ``s_ij = max_p cos(a_i, v_j[:, p]) / tau``, symmetric CE
  with the positives on the diagonal, the two directions *summed* (as in the public code).
* :func:`avgn_localization_loss` — AVGN's per-source version (paper Eq. 10): every (sample, sounding
  class) pair is a positive with its own image; the other images of the batch are the negatives
  (audio -> visual), and the sounding sources of the other samples are the negatives of a pair's
  visual target (visual -> audio). With one source per sample and ``loc_target='public'`` this is
  exactly EZ-VSL's loss on the sounding class's embedding.
* :func:`avgn_total_loss` — the weighted sum, with a dict of the parts.

Batch convention for the AVGN losses (``batch`` dict):

* ``labels`` ``[B, C]`` float multi-hot of the classes *heard* in the mixture (audio presence target);
* ``visual_labels`` ``[B, C]`` (optional, default ``labels``): classes *visible* in the frame;
* ``source_classes`` ``[B, S]`` long, padded with ``-1``, and ``source_mask`` ``[B, S]`` bool
  (optional): the sounding sources to localise; by default every positive of ``labels``
  (:func:`sources_from_multihot`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "token_ce_loss",
    "presence_bce_loss",
    "maxmil_similarity",
    "maxmil_contrastive_loss",
    "sources_from_multihot",
]


def token_ce_loss(token_logits: torch.Tensor) -> torch.Tensor:
    """``CE(token_logits [C, C], arange(C))`` (token ``c`` must be classified as class ``c``)."""
    if token_logits.dim() != 2 or token_logits.shape[0] != token_logits.shape[1]:
        raise ValueError(f"token_logits must be [C, C], got {tuple(token_logits.shape)}")
    target = torch.arange(token_logits.shape[0], device=token_logits.device)
    return F.cross_entropy(token_logits, target)


def presence_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over all ``B * C`` entries."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def _fp32(x: torch.Tensor | None) -> torch.Tensor | None:
    """Half / bfloat16 -> float32 (other dtypes unchanged).

    The contrastive scores are cosines divided by ``tau = 0.03``: in bf16 (8-bit mantissa) a logit
    near 30 is only resolved to ~0.1, so under bf16 autocast they are computed in fp32 (they cost
    ``O(P * B * D * h * w)``, nothing next to the network).
    """
    return x.float() if x is not None and x.dtype in (torch.float16, torch.bfloat16) else x


def maxmil_similarity(audio: torch.Tensor, visual: torch.Tensor, tau: float, normalize: bool = True) -> torch.Tensor:
    """``s[i, j] = max_p cos(audio_i, visual_j[:, p]) / tau`` for ``audio [B, D]``, ``visual [B, D, h, w]``."""
    with torch.autocast(audio.device.type, enabled=False):
        audio, visual = _fp32(audio), _fp32(visual)
        if normalize:
            audio = F.normalize(audio, dim=1)
            visual = F.normalize(visual, dim=1)
        sim = torch.einsum("id,jdp->ijp", audio, visual.flatten(2))
        return sim.amax(dim=-1) / tau


def maxmil_contrastive_loss(
    audio: torch.Tensor, visual: torch.Tensor, tau: float = 0.03, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """EZ-VSL max-MIL contrastive loss. Returns ``(loss, logits [B_audio, B_visual])``.

    ``loss = CE(s, arange(B)) + CE(s^T, arange(B))`` — the two directions are summed, not averaged,
    as in the public EZ-VSL/AVGN code.
    """
    logits = maxmil_similarity(audio, visual, tau, normalize)
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target), logits


def sources_from_multihot(labels: torch.Tensor, max_sources: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-hot ``[B, C]`` -> ``(source_classes [B, S] padded with -1, source_mask [B, S])``.

    Classes appear in increasing order; ``S`` is the largest number of positives in the batch
    (at least 1) or ``max_sources``.
    """
    pos = labels > 0.5
    counts = pos.sum(dim=1)
    s = max(int(counts.max().item()) if labels.numel() else 0, 1)
    if max_sources is not None:
        s = max_sources
    num_classes = labels.shape[1]
    # sort key: positives first, in increasing class order
    idx = torch.arange(num_classes, device=labels.device).expand_as(pos)
    key = torch.where(pos, idx, idx + num_classes)
    order = key.argsort(dim=1)[:, :s]
    if order.shape[1] < s:
        order = F.pad(order, (0, s - order.shape[1]), value=0)
    mask = torch.arange(s, device=labels.device)[None] < counts[:, None]
    classes = torch.where(mask, order, torch.full_like(order, -1))
    return classes, mask


