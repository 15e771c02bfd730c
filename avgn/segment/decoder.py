"""A small promptable mask decoder trained on the benchmark's own object masks (beyond GSAVL).

Segment Anything learned "what an object is" from a billion masks; the benchmark of this book has
exact masks for every sounding object it pastes. :class:`PointMaskNet` is a small encoder-decoder
(a few hundred thousand weights) that takes a frame and its point prompts and returns one mask:

* input ``[B, 4, S, S]``: the RGB frame resized to ``S x S`` (default 112) and a prompt channel,
  a Gaussian bump (``sigma`` px) at every foreground point (background points are not used);
* output ``[B, 1, S, S]`` mask logits, resized back to the frame by the segmenter.

:func:`train_point_decoder` trains it on (frame, source mask) pairs with 1 to ``max_points``
prompts drawn uniformly inside the mask (so it does not learn any map's habits), with a binary
cross-entropy plus soft-Dice loss; :class:`DecoderSegmenter` is the
:class:`avgn.segment.segmenters.PromptableSegmenter` around a trained model. Only sounding sources'
masks are stored by the build, so the decoder never sees a distractor as a target (it sees them in
the frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DecoderConfig", "PointMaskNet", "prompt_channel", "train_point_decoder", "DecoderSegmenter"]


@dataclass(frozen=True)
class DecoderConfig:
    """Size and training of the decoder."""

    size: int = 112  # working resolution (frames are resized to size x size)
    width: int = 16  # channels of the first stage (x2, x4, x4 below)
    sigma: float = 3.0  # the prompt bump's standard deviation, in working pixels
    max_points: int = 3
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3


def prompt_channel(points: Tensor, hw: tuple[int, int], size: int, sigma: float) -> Tensor:
    """``[1, size, size]``: the max of Gaussian bumps at ``points`` ``[N, 2]`` (x, y in frame pixels
    of a frame of shape ``hw``)."""
    h, w = hw
    ys = (torch.arange(size, dtype=torch.float32) + 0.5) * h / size
    xs = (torch.arange(size, dtype=torch.float32) + 0.5) * w / size
    s = sigma * h / size
    out = torch.zeros(size, size)
    for x, y in points.float().tolist():
        g = torch.exp(-((ys[:, None] - y - 0.5) ** 2 + (xs[None, :] - x - 0.5) ** 2) / (2 * s * s))
        out = torch.maximum(out, g)
    return out[None]


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PointMaskNet(nn.Module):
    """Frame + prompt channel ``[B, 4, S, S]`` -> mask logits ``[B, 1, S, S]`` (a 3-level U-Net with
    a dilated bottleneck)."""

    def __init__(self, width: int = 16):
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.e1, self.e2, self.e3 = _block(4, c1), _block(c1, c2, 2), _block(c2, c3, 2)
        self.mid = nn.Sequential(nn.Conv2d(c3, c3, 3, 1, 2, dilation=2), nn.ReLU(inplace=True),
                                 nn.Conv2d(c3, c3, 3, 1, 4, dilation=4), nn.ReLU(inplace=True))
        self.d2, self.d1 = _block(c3 + c2, c2), _block(c2 + c1, c1)
        self.head = nn.Conv2d(c1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.e1(x)
        b = self.e2(a)
        c = self.mid(self.e3(b))
        u = self.d2(torch.cat([F.interpolate(c, size=b.shape[-2:], mode="bilinear", align_corners=False), b], 1))
        u = self.d1(torch.cat([F.interpolate(u, size=a.shape[-2:], mode="bilinear", align_corners=False), a], 1))
        return self.head(u)


def _inputs(images: Tensor, points: list[Tensor], cfg: DecoderConfig) -> Tensor:
    """``images [B, 3, H, W]`` float in [0, 1] and per-image points -> ``[B, 4, S, S]``."""
    hw = tuple(images.shape[-2:])
    rgb = F.interpolate(images.float(), size=(cfg.size, cfg.size), mode="bilinear", align_corners=False, antialias=True)
    prm = torch.stack([prompt_channel(p, hw, cfg.size, cfg.sigma) for p in points])
    return torch.cat([rgb, prm], 1)


def _points_inside(mask: Tensor, n: int, g: torch.Generator) -> Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    pick = torch.randint(len(ys), (n,), generator=g)
    return torch.stack([xs[pick], ys[pick]], 1)


def train_point_decoder(images: Tensor, masks: Tensor, cfg: DecoderConfig = DecoderConfig(), seed: int = 0,
                        log_every: int = 0) -> tuple[PointMaskNet, list[float]]:
    """Train a :class:`PointMaskNet` on frames ``images [P, 3, H, W]`` (uint8, or float in [0, 1])
    and their object masks ``[P, H, W]`` (empty masks are skipped). Returns ``(model in eval mode,
    loss per step)``; deterministic for a seed on one thread."""
    keep = masks.flatten(1).any(1)
    if not bool(keep.any()):
        raise ValueError("no non-empty mask to train the decoder on")
    images, masks = images[keep], masks[keep]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PointMaskNet(cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    losses = []
    model.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)
        imgs = images[idx].float() / (255.0 if images.dtype == torch.uint8 else 1.0)
        pts = [_points_inside(masks[i], int(torch.randint(1, cfg.max_points + 1, (1,), generator=g)), g) for i in idx.tolist()]
        target = F.interpolate(masks[idx, None].float(), size=(cfg.size, cfg.size), mode="area")
        logits = model(_inputs(imgs, pts, cfg))
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * target).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target) + dice.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"decoder step {step + 1}/{cfg.steps}: loss {sum(losses[-log_every:]) / log_every:.3f}", flush=True)
    return model.eval(), losses


class DecoderSegmenter:
    """A trained :class:`PointMaskNet` as a promptable segmenter (foreground points only; the heatmap
    is not read: the decoder sees the frame and the prompts, as SAM does)."""

    name = "trained decoder"

    def __init__(self, model: PointMaskNet, cfg: DecoderConfig = DecoderConfig(), threshold: float = 0.5):
        self.model, self.cfg, self.threshold = model.eval(), cfg, threshold

    @torch.no_grad()
    def __call__(self, image: Tensor, points: Tensor, labels: Tensor, heat: Tensor | None = None) -> Tensor:
        from avgn.segment.segmenters import _check_prompts

        h, w = _check_prompts(image, points, labels)
        fg = points[labels == 1]
        if len(fg) == 0:
            raise ValueError("the trained decoder needs at least one foreground point (label 1)")
        logits = self.model(_inputs(image[None], [fg], self.cfg))
        prob = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False))[0, 0]
        return prob > self.threshold
