"""Mix-and-Localize (Hu et al., CVPR 2022) as a method: ``K`` class-agnostic slot maps
(:class:`avgn.models.MixAndLocalize`), matched to the sources one-to-one by the evaluation.

The model
---------

Mix-and-Localize (Hu, Chen & Owens, CVPR 2022): localising several sources by a contrastive
random walk between audio nodes and image nodes. A simple, faithful re-implementation.

What the public code does (read, not copied): the mixture's audio goes through a ResNet-18, is
max-pooled, and ``K`` separate MLP heads turn it into ``K`` L2-normalised audio nodes ("slots") — the
number of sources is *fixed* to ``K`` (public: 2). Images give L2-normalised region features
(public: two 1x1 convs on a ResNet-18 map). The affinity of an audio node and an image is the max
over the image's regions of their dot product. Groups of ``K`` images form a graph with the ``K``
slots of the mixture of their sounds; transitions are row-softmaxes of affinity / temperature
(``0.07``). The walk slots -> images -> slots must return to its start: the loss is the cross-entropy
of the two-step transition matrix against the identity. Two different clips of the same ``K`` videos
are mixed (``spec`` and ``spec2``): the first step leaves from ``spec2``'s slots, the second returns to
``spec``'s slots, so each head has to pick out the same source in both mixtures.

Here:

* ``graph='images'`` is that public graph: ``image`` holds ``G*K`` frames in groups of ``K``
  consecutive ones, ``spec`` (and optionally ``spec2``) holds the ``G`` mixtures.
* ``graph='mixture'`` (default, for this project's benchmark where one — possibly composite —
  image goes with one mixture): the nodes are *all* frames (the two halves of a ``concat`` duet are
  two frames) and *all* slots of the batch, a frame's affinity is the max over its regions as in the
  public graph. As in the public graph a slot steps only onto the frames of its own mixture; the
  return step goes to every slot of the batch, so a frame must prefer its own mixture's slots to the
  other mixtures' (audio-visual correspondence, the other pairs of the batch as negatives) and, on
  ``concat`` duets, its own sound's slot to its partner's (separation).
* ``graph='frames'`` (this book's earlier default): the same nodes, but the first step goes to any
  frame of the batch. It has a shortcut, measured in chapter 3 (:func:`avgnbook.diagnostics.walk_locality`):
  a slot returns through whichever frame of the batch it and that frame mutually prefer, so the
  cycle loss falls while the first step puts no more mass on the slot's own frame than on any other
  and the maps point away from the sources.
* ``graph='pairs'``: the public graph on ``concat`` duets (each mixture's ``K`` slots and its own
  ``K`` frames, nothing crossing mixtures; concat training items only). On the cpu profile its loss
  stays near its chance level ``ln K`` for the first epochs (measured, README).
* ``graph='regions'`` (the book's first adaptation, kept as an ablation): the nodes are *all*
  regions and *all* slots of the batch. It has a shortcut, measured in an earlier edition of chapter 3
  (:func:`avgnbook.diagnostics.walk_locality`): a slot can return to itself through any single region of
  the batch that prefers it, in any frame, so the cycle loss falls while the walk's first step puts
  no more mass on the slot's own frame than on any other (1 / B).
* Differences from the public code: the shared :class:`~avgn.models.encoders.VisualEncoder` (one 1x1
  conv + L2, 7x7 map) instead of two 1x1 convs on a 14x14 map; no learned scalar on the similarity
  map; an L2-normalised slot instead of the public un-normalised ``[B, 128, 1, 1]`` reshape.

Localisation map of slot ``k``: ``cos(slot_k, f_p)``. Slots are not tied to classes; the evaluator
must match slots to ground-truth sources (e.g. Hungarian matching on IoU) — an open question noted
in the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from torch import Tensor, nn

from avgn.methods.base import Method
from avgn.methods.registry import register_method

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import Profile
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from avgn.models.config import MAL_GRAPHS, EncoderConfig, _sync_encoder_dim
from avgn.models.encoders import AudioResNet18, AudioVisualModel, _init_from_scratch

__all__ = ['MALMethod', 'MixAndLocalize', 'frame_nodes', 'mal_cycle_loss_frames', 'mal_cycle_loss_images', 'mal_cycle_loss_mixture', 'mal_cycle_loss_pairs', 'mal_cycle_loss_regions', 'MALConfig']


@dataclass(frozen=True)
class MALConfig:
    """Mix-and-Localize (Hu et al., CVPR 2022): cycle-consistent random walk, K fixed sources.

    Attributes:
        num_sources: ``K``, the fixed number of audio nodes (slots) per mixture (public: 2).
        dim: embedding dimension (public: 128).
        hidden: hidden width of the per-slot audio MLP heads.
        cycle_temp: temperature of the random-walk transitions (public default 0.07).
        graph: ``mixture`` (default) = every frame of the batch is an image node (the halves of a
            ``concat`` duet are two frames), affinity = max over its regions; a slot steps only onto
            its own mixture's frames (as in the public graph) and returns over every slot of the
            batch; ``frames`` = the same nodes, both steps over the whole batch (this book's earlier
            default; it has a shortcut, see :mod:`avgn.methods.mal`); ``pairs`` = the public graph on
            ``concat`` duets only (nothing crosses mixtures); ``images`` = the public graph: groups
            of ``K`` separate images, audio of the group mixed; ``regions`` = one (possibly
            composite) image per mixture, nodes are all regions and all slots of the batch (an
            earlier adaptation; it has a shortcut).
    """

    num_sources: int = 2
    dim: int = 128
    hidden: int = 128
    cycle_temp: float = 0.07
    graph: str = "mixture"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if self.graph not in MAL_GRAPHS:
            raise ValueError(f"graph must be one of {MAL_GRAPHS}, got {self.graph!r}")
        if self.num_sources < 1:
            raise ValueError("num_sources must be >= 1")
        _sync_encoder_dim(self)


def _cycle_nll(walk: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL of returning to the start for a batch of square transition products ``[..., n, n]``."""
    n = walk.shape[-1]
    flat = walk.reshape(-1, n)
    target = torch.arange(n, device=walk.device).repeat(flat.shape[0] // n)
    loss = F.nll_loss(torch.log(flat + eps), target)
    acc = (flat.argmax(dim=1) == target).float().mean()
    return loss, acc


def mal_cycle_loss_images(
    visual: torch.Tensor, slots: torch.Tensor, slots2: torch.Tensor | None = None, temp: float = 0.07
) -> tuple[torch.Tensor, torch.Tensor]:
    """Public graph. ``visual`` ``[G*K, D, h, w]`` (groups of ``K`` consecutive frames), ``slots`` /
    ``slots2`` ``[G, K, D]``. Returns ``(loss, accuracy of the return step)``."""
    g, k, d = slots.shape
    if visual.shape[0] != g * k:
        raise ValueError(f"graph='images' needs G*K={g * k} frames for {g} mixtures of K={k}, got {visual.shape[0]}")
    s2 = slots if slots2 is None else slots2
    v = visual.flatten(2).reshape(g, k, d, -1)  # [G, K_img, D, Q]
    a_is = torch.einsum("gidq,gjd->gijq", v, slots).amax(-1)  # image i -> slot j (return step)
    a_si = torch.einsum("gjd,gidq->gjiq", s2, v).amax(-1)  # slot j -> image i (first step)
    walk = torch.softmax(a_si / temp, dim=-1) @ torch.softmax(a_is / temp, dim=-1)  # [G, K, K]
    return _cycle_nll(walk)


def mal_cycle_loss_regions(
    visual: torch.Tensor, slots: torch.Tensor, slots2: torch.Tensor | None = None, temp: float = 0.07
) -> tuple[torch.Tensor, torch.Tensor]:
    """Region graph. ``visual`` ``[B, D, h, w]``, ``slots`` / ``slots2`` ``[B, K, D]`` (one mixture per
    frame). Walk: slot (of ``slots2``) -> any region of the batch -> any slot (of ``slots``)."""
    b, k, d = slots.shape
    if visual.shape[0] != b:
        raise ValueError(f"graph='regions' needs one frame per mixture, got {visual.shape[0]} frames, {b} mixtures")
    s1 = slots.reshape(b * k, d)
    s2 = (slots if slots2 is None else slots2).reshape(b * k, d)
    r = visual.flatten(2).transpose(1, 2).reshape(-1, d)  # [B*Q, D]
    walk = torch.softmax(s2 @ r.t() / temp, dim=-1) @ torch.softmax(r @ s1.t() / temp, dim=-1)  # [BK, BK]
    return _cycle_nll(walk)


def frame_nodes(visual: torch.Tensor) -> torch.Tensor:
    """``[B, D, h, w]`` -> ``[B, n, D, h * w / n]``: the regions of each of the ``n = w // h`` frames of
    an image (``n = 2`` for a ``concat`` duet of two square frames side by side, 1 for a single frame)."""
    b, d, h, w = visual.shape
    n = w // h if w >= h and w % h == 0 else 1
    return visual.reshape(b, d, h, n, w // n).permute(0, 3, 1, 2, 4).reshape(b, n, d, h * (w // n))


def mal_cycle_loss_frames(
    visual: torch.Tensor, slots: torch.Tensor, slots2: torch.Tensor | None = None, temp: float = 0.07,
    own_first_step: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame graph (this book's earlier default; with ``own_first_step`` the mixture graph,
    :func:`mal_cycle_loss_mixture`). ``visual`` ``[B, D, h, w]`` (each image one frame, or ``n``
    frames side by side: :func:`frame_nodes`), ``slots`` / ``slots2`` ``[B, K, D]``.

    The image nodes are the frames of the whole batch, as in the public graph an image's affinity to a
    slot is the max over its regions, and the walk goes slot (of ``slots2``) -> any frame of the batch
    -> any slot (of ``slots``). A frame is one node for all of its regions, so it can prefer only the
    few slots near its best region, and a slot has to find a frame that prefers it among all frames of
    the batch, which across batches only the frame holding its sound does consistently; with single
    regions as nodes any region of any frame that is near the slot will do
    (:func:`mal_cycle_loss_regions`). On ``concat`` duets (two frames with the mixture of their
    two sounds) it is the public graph with every other pair of the batch added as negatives; with a
    single frame per mixture the return step cannot tell its ``K`` slots apart by the frame alone."""
    b, k, d = slots.shape
    if visual.shape[0] != b:
        graph = "mixture" if own_first_step else "frames"
        raise ValueError(f"graph={graph!r} needs one image per mixture, got {visual.shape[0]} images, {b} mixtures")
    frames = frame_nodes(visual).flatten(0, 1)  # [B*n, D, Q]
    s1 = slots.reshape(b * k, d)
    s2 = (slots if slots2 is None else slots2).reshape(b * k, d)
    a_sf = torch.einsum("sd,fdq->sfq", s2, frames).amax(-1)  # slot -> frame [BK, Bn]
    a_fs = torch.einsum("sd,fdq->fsq", s1, frames).amax(-1)  # frame -> slot [Bn, BK]
    if own_first_step:  # a slot may step only onto the frames of its own mixture
        n = frames.shape[0] // b
        own = torch.arange(b, device=slots.device).repeat_interleave(k)[:, None] == torch.arange(b, device=slots.device).repeat_interleave(n)[None, :]
        a_sf = a_sf.masked_fill(~own, float("-inf"))
    walk = torch.softmax(a_sf / temp, dim=-1) @ torch.softmax(a_fs / temp, dim=-1)  # [BK, BK]
    return _cycle_nll(walk)


def mal_cycle_loss_mixture(
    visual: torch.Tensor, slots: torch.Tensor, slots2: torch.Tensor | None = None, temp: float = 0.07
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture graph: the frame graph (:func:`mal_cycle_loss_frames`) whose first step leaves a slot
    only onto the frames of its *own* mixture, as in the public graph, while the return step goes to
    every slot of the batch. To come back, a frame must prefer its own mixture's slot to every other
    mixture's slots (audio-visual correspondence, the other pairs of the batch as negatives) and, on a
    ``concat`` duet, the slot of its own sound to its partner's (separation); the detour through
    another mixture's frame that closes the frame graph's cycle without either is not a path."""
    return mal_cycle_loss_frames(visual, slots, slots2, temp, own_first_step=True)


def mal_cycle_loss_pairs(
    visual: torch.Tensor, slots: torch.Tensor, slots2: torch.Tensor | None = None, temp: float = 0.07
) -> tuple[torch.Tensor, torch.Tensor]:
    """The public graph on this benchmark's ``concat`` duets. ``visual`` ``[B, D, h, K*h]`` (each image
    the ``K`` frames whose sounds make its mixture, side by side: :func:`frame_nodes`), ``slots`` /
    ``slots2`` ``[B, K, D]``. Each mixture is one group of the public graph: its ``K`` slots walk to its
    own ``K`` frames and back (:func:`mal_cycle_loss_images`), nothing crosses groups.

    Raises:
        ValueError: if an image is not ``K`` frames (single frames give the walk one image node, so its
            return step could not tell the ``K`` slots apart): train on ``concat`` duets only
            (``train.solo_items=0``, ``train.scene_items=0``)."""
    b, k, _ = slots.shape
    frames = frame_nodes(visual)  # [B, n, D, Q]
    if frames.shape[1] != k:
        raise ValueError(
            f"graph='pairs' needs each image to be the K={k} frames of its mixture (a concat duet), got images of "
            f"{frames.shape[1]} frame(s) {tuple(visual.shape[-2:])}; train it on concat duets only "
            "(--set train.solo_items=0 --set train.scene_items=0) or use graph='frames'")
    grouped = frames.reshape(b * k, frames.shape[2], visual.shape[2], visual.shape[3] // k)  # [B*K, D, h, w/K]
    return mal_cycle_loss_images(grouped, slots, slots2, temp)


_LOSSES = {"frames": mal_cycle_loss_frames, "images": mal_cycle_loss_images, "mixture": mal_cycle_loss_mixture,
           "pairs": mal_cycle_loss_pairs, "regions": mal_cycle_loss_regions}


class MixAndLocalize(AudioVisualModel):
    """Mix-and-Localize with ``K = cfg.num_sources`` audio slots. See the module docstring."""

    label = "MixAndLocalize"
    spec_name = "a mixture spectrogram"

    def __init__(self, cfg: MALConfig | None = None) -> None:
        cfg = cfg or MALConfig()
        super().__init__(cfg)
        self.audio_trunk = AudioResNet18(1, cfg.encoder.audio_width)
        c = self.audio_trunk.out_channels
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(c, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, cfg.dim))
            for _ in range(cfg.num_sources)
        )
        _init_from_scratch([self.audio_trunk])
        for head in self.heads:  # default PyTorch Linear init (as the public heads)
            for m in head:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()

    def audio_slots(self, spec: torch.Tensor) -> torch.Tensor:
        """``[B, 1, F, T]`` mixture -> ``K`` L2-normalised slots ``[B, K, D]``."""
        pooled = self.audio_trunk(spec).amax(dim=(2, 3))
        return F.normalize(torch.stack([h(pooled) for h in self.heads], dim=1), dim=-1)

    def forward(self, image: torch.Tensor | None = None, spec: torch.Tensor | None = None,
                visual_feats: torch.Tensor | None = None, spec2: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``slots`` ``[B_mix, K, D]`` (and ``slots2`` for a second clip), ``visual_map_feats``."""
        vmap, vback = self.encode_frame(image, spec, visual_feats)
        out = {"slots": self.audio_slots(spec), "visual_map_feats": vmap, "visual_backbone_feats": vback}
        if spec2 is not None:
            out["slots2"] = self.audio_slots(spec2)
        return out

    def loss(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, acc = _LOSSES[self.cfg.graph](outputs["visual_map_feats"], outputs["slots"], outputs.get("slots2"), self.cfg.cycle_temp)
        return loss, {"cycle": loss.detach(), "cycle_acc": acc.detach(), "total": loss.detach()}

    def localize(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B_img, K, h, w]``: ``cos(slot_k, f_p)``; with ``graph='images'`` frame ``b`` uses the
        slots of mixture ``b // K``."""
        slots, f = outputs["slots"], outputs["visual_map_feats"]
        if slots.shape[0] != f.shape[0]:
            k = self.cfg.num_sources
            slots = slots.repeat_interleave(k, dim=0)
        return torch.einsum("bkd,bdhw->bkhw", slots, f)


#: The public code's embedding width, which the gpu profile keeps (smaller profiles shrink it).
PUBLIC_DIM = 128


@register_method
class MALMethod(Method):
    """Cycle-consistent random walk between audio slots and image regions."""

    name = "mal"
    label = "Mix-and-Localize"
    kind = "slots"
    config_cls = MALConfig

    def default_config(self, profile: "Profile") -> MALConfig:
        d = min(profile.sizes.dim, PUBLIC_DIM)
        return MALConfig(dim=d, hidden=d, encoder=profile.encoder)

    def build(self, cfg: MALConfig) -> MixAndLocalize:
        return MixAndLocalize(cfg)

    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return model.loss(outputs)

    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"maps": model.localize(outputs)}  # [B, K, h, w]

    def value_label(self, model: nn.Module | None) -> str:
        return "cos(slot$_k$, f$_p$): audio slot vs. pixel feature"
