"""Promptable segmenters: an image, point prompts and their labels in, one boolean mask out.

The interface (:class:`PromptableSegmenter`)::

    mask = segmenter(image, points, labels, heat=None)
    # image  [3, H, W] float in [0, 1]  (the benchmark's frames)
    # points [N, 2] long (x, y) pixel coordinates; labels [N] long (1 foreground, 0 background)
    # heat   [H, W] optional heatmap, min-max normalised (GrabCut reads its low-heat region)
    # mask   [H, W] bool

Two implementations:

* :class:`GrabCutSegmenter` — **a substitute for Segment Anything**, offline and weight-free:
  OpenCV's ``cv2.grabCut`` initialised with a mask (``GC_INIT_WITH_MASK``): a disk around each
  foreground point is certain foreground, a disk around each background point and the low-heat
  region (heat below ``bg_heat``) certain background, the high-heat region probable foreground and
  the rest probable background. It models colour (Gaussian mixtures) and contrast edges, not object
  shape: it is not what SAM would give.
* :class:`SamSegmenter` — Segment Anything through the ``segment-anything`` package, from a
  checkpoint file the user supplies (:meth:`SamSegmenter.from_checkpoint`); nothing is downloaded
  and no weights ship with this project.

OpenCV and ``segment-anything`` are the optional ``segment`` extra; each is imported when its
segmenter is built, with an error saying how to install it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = ["PromptableSegmenter", "GrabCutConfig", "GrabCutSegmenter", "SamSegmenter", "SAM_MODEL_TYPES", "to_uint8_hwc"]

#: The architectures of ``segment_anything.sam_model_registry``.
SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


class PromptableSegmenter(Protocol):
    """``(image [3, H, W], points [N, 2], labels [N], heat [H, W] | None) -> mask [H, W] bool``."""

    name: str

    def __call__(self, image: Tensor, points: Tensor, labels: Tensor, heat: Tensor | None = None) -> Tensor: ...


def to_uint8_hwc(image: Tensor) -> np.ndarray:
    """A ``[3, H, W]`` float image in ``[0, 1]`` as a contiguous ``uint8`` ``[H, W, 3]`` RGB array."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(arr)


def _check_prompts(image: Tensor, points: Tensor, labels: Tensor) -> tuple[int, int]:
    h, w = image.shape[-2:]
    if points.dim() != 2 or points.shape[1] != 2 or labels.shape != (points.shape[0],):
        raise ValueError(f"points must be [N, 2] (x, y) and labels [N]; got {tuple(points.shape)} and {tuple(labels.shape)}")
    if points.shape[0] == 0:
        raise ValueError("at least one point prompt is needed")
    x, y = points[:, 0], points[:, 1]
    if bool(((x < 0) | (x >= w) | (y < 0) | (y >= h)).any()):
        raise ValueError(f"points outside the {w} x {h} image: {points.tolist()}")
    return int(h), int(w)


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("GrabCutSegmenter needs OpenCV: pip install -e '.[segment]' (opencv-python-headless)") from exc
    return cv2


@dataclass(frozen=True)
class GrabCutConfig:
    """GrabCut's seeds and iterations (radii in pixels, heat thresholds on the min-max map)."""

    point_radius: int = 4  # certain foreground / background around each point
    bg_heat: float = 0.2  # heat below this: certain background
    fg_heat: float = 0.6  # heat at or above this: probable foreground
    border: int = 2  # without a heatmap: a frame border this wide is certain background
    iterations: int = 5
    seed: int = 0  # OpenCV's RNG (GrabCut's GMM initialisation uses k-means)


class GrabCutSegmenter:
    """OpenCV GrabCut seeded from point prompts and a heatmap (module docstring): a **SAM substitute**."""

    name = "GrabCut (SAM substitute)"

    def __init__(self, cfg: GrabCutConfig = GrabCutConfig()):
        self.cfg = cfg
        self._cv2 = _import_cv2()

    def seeds(self, h: int, w: int, points: Tensor, labels: Tensor, heat: Tensor | None) -> np.ndarray:
        """GrabCut's initial label mask ``[H, W]`` uint8 (``GC_BGD``/``GC_FGD``/``GC_PR_*``)."""
        cv2, c = self._cv2, self.cfg
        m = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        if heat is not None:
            if tuple(heat.shape) != (h, w):
                raise ValueError(f"heat {tuple(heat.shape)} must be the image's size {(h, w)}")
            hm = heat.detach().float().cpu().numpy()
            m[hm >= c.fg_heat] = cv2.GC_PR_FGD
            m[hm < c.bg_heat] = cv2.GC_BGD
        else:
            b = c.border
            m[:b], m[-b:], m[:, :b], m[:, -b:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
        for (x, y), lab in zip(points.tolist(), labels.tolist()):
            cv2.circle(m, (int(x), int(y)), c.point_radius, int(cv2.GC_FGD if lab == 1 else cv2.GC_BGD), thickness=-1)
        return m

    def __call__(self, image: Tensor, points: Tensor, labels: Tensor, heat: Tensor | None = None) -> Tensor:
        cv2 = self._cv2
        h, w = _check_prompts(image, points, labels)
        m = self.seeds(h, w, points, labels, heat)
        fg = (m == cv2.GC_FGD) | (m == cv2.GC_PR_FGD)
        if not fg.any():
            raise ValueError("GrabCut needs a foreground seed: give at least one point with label 1")
        if not ((m == cv2.GC_BGD) | (m == cv2.GC_PR_BGD)).any():
            return torch.ones(h, w, dtype=torch.bool)  # nothing can be background
        cv2.setRNGSeed(self.cfg.seed)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(to_uint8_hwc(image), m, None, bgd, fgd, self.cfg.iterations, cv2.GC_INIT_WITH_MASK)
        return torch.from_numpy((m == cv2.GC_FGD) | (m == cv2.GC_PR_FGD))


class SamSegmenter:
    """Segment Anything (``segment-anything`` package) on point prompts, one mask per call
    (``multimask_output=False``, as GSAVL). Build it from a checkpoint with :meth:`from_checkpoint`,
    or wrap an already built ``segment_anything.modeling.Sam``."""

    name = "Segment Anything"

    def __init__(self, sam: Any, device: str | torch.device = "cpu"):
        from segment_anything import SamPredictor

        self.sam = sam.to(device).eval()
        self.predictor = SamPredictor(self.sam)
        self._image_key: int | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, model_type: str = "vit_h", device: str | torch.device = "cpu") -> "SamSegmenter":
        """Build architecture ``model_type`` (``vit_b``, ``vit_l``, ``vit_h``) with the package's
        registry and load the state dict at ``path`` (the official ``sam_vit_*.pth`` files).
        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an unknown
        architecture or a checkpoint of another one."""
        try:
            from segment_anything import sam_model_registry
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("SamSegmenter needs the segment-anything package: pip install -e '.[segment]'") from exc
        path = Path(path)
        if model_type not in SAM_MODEL_TYPES:
            raise ValueError(f"unknown SAM architecture {model_type!r}; choose one of {SAM_MODEL_TYPES} (the one the checkpoint was trained as)")
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint {path} not found: download sam_{model_type}_*.pth from the Segment Anything "
                                    "release yourself and pass its path (nothing is downloaded here)")
        try:
            sam = sam_model_registry[model_type](checkpoint=str(path))
        except RuntimeError as exc:  # load_state_dict: missing / unexpected keys or shape mismatch
            first = str(exc).splitlines()[0]
            raise ValueError(f"{path} is not a {model_type} Segment Anything checkpoint ({first}); pass the model_type it was saved as") from exc
        return cls(sam, device)

    @torch.no_grad()
    def __call__(self, image: Tensor, points: Tensor, labels: Tensor, heat: Tensor | None = None) -> Tensor:
        _check_prompts(image, points, labels)
        key = hash((image.data_ptr(), tuple(image.shape), image._version))
        if key != self._image_key:
            self.predictor.set_image(to_uint8_hwc(image), image_format="RGB")
            self._image_key = key
        masks, _, _ = self.predictor.predict(point_coords=points.cpu().numpy().astype(np.float32),
                                             point_labels=labels.cpu().numpy().astype(np.int64), multimask_output=False)
        return torch.from_numpy(masks[0].astype(bool))
