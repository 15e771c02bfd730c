"""Non-learned reference maps and the EZ-VSL "OGL" fusion.

* :func:`centre_prior` — a Gaussian bump at the frame centre (the "everything is in the middle"
  baseline).
* :func:`object_prior` — ImageNet feature activation energy per position ("objectness" of a
  pretrained backbone): mean absolute activation over channels (the public EZ-VSL/AVGN test scripts'
  ``NormReducer``) or the L2 norm over channels.
* :func:`fuse_with_prior` — ``alpha * av + (1 - alpha) * prior`` after bringing both to ``[0, 1]``.

All maps are at feature resolution; the evaluator upsamples. Min-max normalisation commutes with
bilinear upsampling (a convex combination keeps the min and max), so fusing before or after
upsampling gives the same map.
"""

from __future__ import annotations

import torch

__all__ = ["centre_prior", "object_prior", "minmax_normalize", "fuse_with_prior"]


def centre_prior(h: int, w: int, sigma: float = 0.25, device: torch.device | str | None = None) -> torch.Tensor:
    """``[h, w]`` Gaussian centred on the frame, peak 1; ``sigma`` as a fraction of each side.

    Cell centres are at ``(i + 0.5) / h``, so even sizes have no single peak cell.
    """
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h - 0.5
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w - 0.5
    d2 = ys[:, None] ** 2 + xs[None, :] ** 2
    return torch.exp(-d2 / (2.0 * sigma**2))


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise each map over its last two axes to ``[0, 1]`` (constant maps -> 0)."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(eps)


def object_prior(visual_feats: torch.Tensor, reduce: str = "abs_mean", normalize: bool = True) -> torch.Tensor:
    """Activation energy of backbone features ``[B, C, h, w]`` -> ``[B, 1, h, w]``.

    Args:
        reduce: ``abs_mean`` (mean |x| over channels, as the public test scripts) or ``l2``.
        normalize: min-max normalise each map to ``[0, 1]``.
    """
    if reduce == "abs_mean":
        energy = visual_feats.abs().mean(dim=1, keepdim=True)
    elif reduce == "l2":
        energy = visual_feats.norm(dim=1, keepdim=True)
    else:
        raise ValueError(f"reduce must be 'abs_mean' or 'l2', got {reduce!r}")
    return minmax_normalize(energy) if normalize else energy


def fuse_with_prior(
    av_map: torch.Tensor,
    prior: torch.Tensor,
    alpha: float,
    norm: str = "minmax",
    prior_max: float = 2.5,
) -> torch.Tensor:
    """``alpha * N(av_map) + (1 - alpha) * N(prior)`` with broadcasting over ``[B, K, h, w]``.

    ``norm='minmax'``: each map min-max normalised (EZ-VSL test script). ``norm='fixed'``: the cosine map
    ``[-1, 1] -> [0, 1]`` and the raw (unnormalised) prior divided by ``prior_max`` (AVGN test script,
    2.5 for ResNet-18 ``abs_mean`` energy).
    """
    if norm == "minmax":
        return alpha * minmax_normalize(av_map) + (1.0 - alpha) * minmax_normalize(prior)
    if norm == "fixed":
        return alpha * (av_map + 1.0) / 2.0 + (1.0 - alpha) * prior / prior_max
    raise ValueError(f"norm must be 'minmax' or 'fixed', got {norm!r}")
