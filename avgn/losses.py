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

from typing import Any, Mapping

import torch
import torch.nn.functional as F

__all__ = [
    "token_ce_loss",
    "presence_bce_loss",
    "maxmil_similarity",
    "maxmil_contrastive_loss",
    "sources_from_multihot",
    "avgn_pair_scores",
    "avgn_localization_loss",
    "avgn_loss_terms",
    "avgn_total_loss",
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


def _cos_max(num: torch.Tensor, den_sq: torch.Tensor | None, eps: float = 1e-8) -> torch.Tensor:
    if den_sq is not None:
        num = num / den_sq.clamp_min(eps * eps).sqrt()
    return num.amax(dim=-1)


def avgn_pair_scores(
    audio_emb: torch.Tensor,
    visual_feats: torch.Tensor,
    source_classes: torch.Tensor,
    source_mask: torch.Tensor,
    tau: float = 0.03,
    target: str = "paper",
    visual_emb: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores of every valid (sample ``i``, source class ``n``) pair ``p``.

    Args:
        audio_emb: ``[B, C, D]`` class-aware audio embeddings ``g^a``.
        visual_feats: ``[B, D, h, w]`` spatial visual features ``f``.
        source_classes / source_mask: ``[B, S]`` (see module docstring).
        target: the visual target of pair ``p`` in image ``j``: ``paper`` = ``t_{j,n,q} = f_{j,q} *
            g^v_{j,n}`` (needs ``visual_emb`` ``[B, C, D]``); ``public`` = the raw ``f_{j,q}``.

    Returns:
        ``(a2v [P, B], v2a [P, P], sample_index [P])`` for the ``P`` valid pairs (row-major order):

        * ``a2v[p, j] = max_q cos(g^a_p, t_{j, n_p, q}) / tau`` — the pair's audio against every
          image of the batch (positive ``j = i_p``);
        * ``v2a[p, p'] = max_q cos(g^a_{p'}, t_{i_p, n_p, q}) / tau`` — the pair's own target against
          the audio of every pair (positive ``p' = p``); the *other* sources of the same mixture are
          masked out (``-inf``), so negatives are the sources of the other samples. With one source
          per sample this is exactly EZ-VSL's audio/visual similarity matrix.
    """
    if target not in ("paper", "public"):
        raise ValueError(f"target must be 'paper' or 'public', got {target!r}")
    if target == "paper" and visual_emb is None:
        raise ValueError("target='paper' needs visual_emb [B, C, D]")
    with torch.autocast(audio_emb.device.type, enabled=False):  # fp32 scores, see _fp32
        return _pair_scores(_fp32(audio_emb), _fp32(visual_feats), source_classes, source_mask, tau, target, _fp32(visual_emb))


def _pair_scores(
    audio_emb: torch.Tensor,
    visual_feats: torch.Tensor,
    source_classes: torch.Tensor,
    source_mask: torch.Tensor,
    tau: float,
    target: str,
    visual_emb: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    valid = source_mask & (source_classes >= 0)
    rows, cols = valid.nonzero(as_tuple=True)
    cls = source_classes[rows, cols]  # [P]
    a = F.normalize(audio_emb, dim=-1)
    f = F.normalize(visual_feats.flatten(2), dim=1)  # [B, D, Q]
    a_sel = a[rows, cls]  # [P, D]  g^a_{i,n}
    if target == "public":
        a2v = _cos_max(torch.einsum("pd,jdq->pjq", a_sel, f), None)
        t_own = f[rows]  # [P, D, Q]
    else:
        g = visual_emb[:, cls].transpose(0, 1)  # [P, B, D]  g^v_{j,n} for every j
        # cos(a, f * g) = sum_d a_d g_d f_dq / ||f_q * g||  (never materialise f * g for all pairs)
        num = torch.einsum("pjd,jdq->pjq", a_sel[:, None] * g, f)
        den = torch.einsum("pjd,jdq->pjq", g * g, f * f)
        a2v = _cos_max(num, den)
        g_own = visual_emb[rows, cls]  # [P, D]  g^v_{i,n}
        t_own = F.normalize(f[rows] * g_own[:, :, None], dim=1)  # [P, D, Q]
    v2a = _cos_max(torch.einsum("kd,pdq->pkq", a_sel, t_own), None)
    same_sample = rows[:, None] == rows[None, :]
    other_source = same_sample & ~torch.eye(len(rows), dtype=torch.bool, device=rows.device)
    v2a = v2a.masked_fill(other_source, float("-inf"))
    return a2v / tau, v2a / tau, rows


def avgn_localization_loss(
    audio_emb: torch.Tensor,
    visual_feats: torch.Tensor,
    source_classes: torch.Tensor,
    source_mask: torch.Tensor,
    tau: float = 0.03,
    target: str = "paper",
    visual_emb: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Per-source max-MIL contrastive loss (paper Eq. 10 over multi-source batches).

    Mean over valid pairs of ``CE(a2v_p, i_p)`` (+ ``CE(v2a_p, p)`` if ``symmetric``; the two
    directions summed like EZ-VSL); see :func:`avgn_pair_scores`. With ``target='public'`` and
    exactly one source per sample this equals :func:`maxmil_contrastive_loss` on
    ``(g^a_{i, n_i}, f_i)``. Returns 0 (with a graph) when the
    batch has no valid source.
    """
    a2v, v2a, idx = avgn_pair_scores(audio_emb, visual_feats, source_classes, source_mask, tau, target, visual_emb)
    if idx.numel() == 0:
        return audio_emb.sum() * 0.0
    loss = F.cross_entropy(a2v, idx)
    if symmetric:
        loss = loss + F.cross_entropy(v2a, torch.arange(len(idx), device=idx.device))
    return loss


def avgn_loss_terms(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any], cfg: Any) -> dict[str, torch.Tensor]:
    """AVGN's four loss terms, unweighted, with their graphs: ``loc`` (Eq. 10 per source,
    :func:`avgn_localization_loss`), ``token`` (:func:`token_ce_loss`), ``audio_cls`` and
    ``visual_cls`` (:func:`presence_bce_loss` on the multi-hot labels; ``visual_labels`` if the batch
    has them). ``batch``: ``labels [B, C]`` and ``source_classes`` / ``source_mask`` ``[B, S]``
    (derived from the labels when absent)."""
    labels = batch["labels"].to(outputs["audio_logits"].dtype)
    visual_labels = batch.get("visual_labels")
    visual_labels = labels if visual_labels is None else visual_labels.to(labels.dtype)
    if batch.get("source_classes") is not None:
        source_classes = batch["source_classes"]
        source_mask = batch.get("source_mask")
        if source_mask is None:
            source_mask = source_classes >= 0
    else:
        source_classes, source_mask = sources_from_multihot(labels)
    loc = avgn_localization_loss(
        outputs["audio_emb"],
        outputs["visual_map_feats"],
        source_classes,
        source_mask,
        tau=cfg.tau,
        target=cfg.loc_target,
        visual_emb=outputs["visual_emb"],
    )
    return {
        "loc": loc,
        "token": token_ce_loss(outputs["token_logits"]),
        "audio_cls": presence_bce_loss(outputs["audio_logits"], labels),
        "visual_cls": presence_bce_loss(outputs["visual_logits"], visual_labels),
    }


def avgn_total_loss(
    outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any], cfg: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted AVGN loss. ``cfg`` is an :class:`avgn.models.config.AVGNConfig`.

    ``loss = w_loc * L_loc + w_token * L_token + w_audio_cls * L_audio + w_visual_cls * L_visual``
    (terms from :func:`avgn_loss_terms`).
    Returns ``(loss, {"loc", "token", "audio_cls", "visual_cls", "total"})`` (parts detached).
    """
    t = avgn_loss_terms(outputs, batch, cfg)
    total = cfg.w_loc * t["loc"] + cfg.w_token * t["token"] + cfg.w_audio_cls * t["audio_cls"] + cfg.w_visual_cls * t["visual_cls"]
    parts = {**t, "total": total}
    return total, {k: v.detach() for k, v in parts.items()}
