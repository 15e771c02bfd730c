"""Boxes and masks in the public annotation formats.

Two normalised box conventions are in use by the public benchmarks:

- MUSIC-Solo/Duet store ``[x, y, w, h]``: top-left corner plus width and height, in [0, 1].
- VGG-SS (and VGGSound-Instruments) store corners ``[x1, y1, x2, y2]`` in [0, 1].

Mixing them up is a real bug in the public AVGN loader (MUSIC boxes read as corners, which empties
about half the masks), so every function here names its format. Internally the library uses
normalised corners (``xyxy``). Pixel masks are boolean tensors ``[..., H, W]``.

A box covers the pixel ``(row i, column j)`` when the pixel's centre ``(j + 0.5, i + 0.5)`` lies inside
``[x1*W, x2*W) x [y1*H, y2*H)``; :func:`mask_to_box` returns the box whose rasterisation is the
mask's bounding rectangle, so ``boxes_to_masks(mask_to_box(m))`` is the tight rectangle around ``m``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_last_dim(boxes: Tensor, name: str) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be floating point (normalised coordinates), got {boxes.dtype}")


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert normalised ``[x, y, w, h]`` (MUSIC) boxes ``[..., 4]`` to corners ``[x1, y1, x2, y2]``."""
    _check_last_dim(boxes, "boxes")
    x, y, w, h = boxes.unbind(-1)
    if (w < 0).any() or (h < 0).any():
        raise ValueError("xywh boxes have negative width or height; are they corners [x1, y1, x2, y2]?")
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Convert normalised corners ``[x1, y1, x2, y2]`` (VGG-SS) ``[..., 4]`` to ``[x, y, w, h]``."""
    _check_last_dim(boxes, "boxes")
    x1, y1, x2, y2 = boxes.unbind(-1)
    if (x2 < x1).any() or (y2 < y1).any():
        raise ValueError("xyxy boxes have x2 < x1 or y2 < y1; are they [x, y, w, h]?")
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def boxes_to_masks(boxes_xyxy: Tensor, size: tuple[int, int]) -> Tensor:
    """Rasterise normalised corner boxes ``[..., 4]`` to boolean masks ``[..., H, W]``.

    Several boxes for the same source are combined by the caller with ``masks.any(dim=...)``.
    Coordinates are clipped to the image.
    """
    _check_last_dim(boxes_xyxy, "boxes_xyxy")
    height, width = size
    b = boxes_xyxy.clamp(0.0, 1.0)
    if (b[..., 2] < b[..., 0]).any() or (b[..., 3] < b[..., 1]).any():
        raise ValueError("boxes_xyxy has x2 < x1 or y2 < y1; convert [x, y, w, h] with xywh_to_xyxy first")
    cols = (torch.arange(width, device=b.device, dtype=b.dtype) + 0.5) / width
    rows = (torch.arange(height, device=b.device, dtype=b.dtype) + 0.5) / height
    in_x = (cols >= b[..., 0:1]) & (cols < b[..., 2:3])  # [..., W]
    in_y = (rows >= b[..., 1:2]) & (rows < b[..., 3:4])  # [..., H]
    return in_y.unsqueeze(-1) & in_x.unsqueeze(-2)


def pixel_boxes_to_normalised(boxes_px: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixel corners ``[x1, y1, x2, y2]`` (x2, y2 exclusive) ``[..., 4]`` to normalised corners."""
    _check_last_dim(boxes_px, "boxes_px")
    height, width = size
    scale = torch.tensor([width, height, width, height], dtype=boxes_px.dtype, device=boxes_px.device)
    return boxes_px / scale


def mask_to_box(masks: Tensor) -> Tensor:
    """Tight normalised corner box ``[..., 4]`` of boolean masks ``[..., H, W]``.

    Raises:
        ValueError: if any mask is empty (an empty mask has no box).
    """
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {masks.dtype}; use masks.bool()")
    if masks.dim() < 2:
        raise ValueError(f"masks must have shape [..., H, W], got {tuple(masks.shape)}")
    height, width = masks.shape[-2:]
    any_row = masks.any(dim=-1)  # [..., H]
    any_col = masks.any(dim=-2)  # [..., W]
    empty = ~any_row.any(dim=-1)
    if empty.any():
        idx = torch.nonzero(empty).tolist()
        raise ValueError(f"mask_to_box got {len(idx)} empty mask(s) at index {idx[:5]}: an empty mask has no box")
    rows = torch.arange(height, device=masks.device)
    cols = torch.arange(width, device=masks.device)
    big = max(height, width) + 1
    y1 = torch.where(any_row, rows, big).amin(dim=-1)
    y2 = torch.where(any_row, rows, -1).amax(dim=-1) + 1
    x1 = torch.where(any_col, cols, big).amin(dim=-1)
    x2 = torch.where(any_col, cols, -1).amax(dim=-1) + 1
    px = torch.stack([x1, y1, x2, y2], dim=-1).to(torch.float64)
    return pixel_boxes_to_normalised(px, (height, width))
