"""The method interface: what the engine needs to know about a localization method.

A method (learned or not) is one subclass of :class:`Method` in its own module of
:mod:`avgn.methods`, registered by name with :func:`avgn.methods.registry.register_method`. It
declares

* ``name`` (the code name: ``avgn``, ``ezvsl``, ...), ``label`` (the name in tables), ``learned``;
* ``kind`` — how its maps attach to the ground-truth sources (:mod:`avgn.evaluate`):
  ``class_aware`` (one map per class, ``[B, C, h, w]``, plus audio presence probabilities ``[B, C]``
  from which it selects the sounding classes itself), ``shared`` (one map for every source,
  ``[B, 1, h, w]``) or ``slots`` (``K`` class-agnostic maps ``[B, K, h, w]``, matched to the
  sources one-to-one);
* ``modes`` — the source-selection modes it supports (``oracle``; ``predicted`` when it decides
  which sources sound without labels);
* its configuration (:meth:`default_config` from a :class:`avgn.profiles.Profile`), how to build
  the model (:meth:`build`), its training loss from ``(outputs, batch)`` (:meth:`loss`), its maps
  (:meth:`predict`), and what to log per epoch besides the validation scores
  (:meth:`epoch_diagnostics`).

The engine (:mod:`avgn.train`, :mod:`avgn.evaluate`, :mod:`avgnbook.explorer`, :mod:`avgnbook.analysis`)
reads only these; it never branches on a method's name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from avgn.profiles import Profile

__all__ = ["MAP_KINDS", "Method", "EpochContext", "model_inputs", "MethodPredictor"]

#: How a method's maps attach to the sources (see the module docstring).
MAP_KINDS = ("class_aware", "shared", "slots")


def model_inputs(batch: Mapping[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Tensor]:
    """``spec`` ``[B, 1, F, T]`` and ``visual_feats`` ``[B, C', h, w]`` (float32) or ``image``
    ``[B, 3, H, W]`` of a batch, on ``device`` (the keyword arguments of every model's ``forward``)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    kw = {"spec": batch["spec"].to(device, non_blocking=True).contiguous(memory_format=fmt)}
    if "visual_feats" in batch:
        # one fused copy (float16 cache -> float32 in the model's memory format), not two
        kw["visual_feats"] = batch["visual_feats"].to(device, dtype=torch.float32, non_blocking=True, memory_format=fmt)
    else:
        kw["image"] = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    return kw


@dataclass(frozen=True)
class EpochContext:
    """What :meth:`Method.on_epoch_start` may read: the experiment, the run's seed, the device, the
    epoch's training batches (a fresh iterator per call, in the epoch's order) and the materialised
    validation sets (:class:`avgn.evaluate.EvalSet`)."""

    exp: Any
    seed: int
    device: torch.device
    train_batches: Callable[[], Iterator[Mapping[str, Any]]]
    val_sets: Sequence[Any]


class Method:
    """Base class of every method (see the module docstring). Subclasses set the class attributes
    and override what applies; instances hold no state."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    kind: ClassVar[str] = "shared"
    modes: ClassVar[tuple[str, ...]] = ("oracle",)
    learned: ClassVar[bool] = True
    #: a class-aware method whose classes come from their names (text anchors), so that classes never
    #: seen in training still get maps (zero-shot, :mod:`avgnbook.zeroshot`)
    names_classes: ClassVar[bool] = False
    #: whether the training loss reads the sounding labels for its sources, so that a training item
    #: with nothing sounding (``train.negative_items``) is a negative, not a positive pair
    trains_on_negatives: ClassVar[bool] = False
    #: the model configuration dataclass (``None`` for a reference without settings)
    config_cls: ClassVar[type | None] = None
    #: the version of this method's training code: part of every stored run's id
    #: (:mod:`avgn.store.plan`), bumped when a change alters what the method trains, which marks its
    #: stored runs stale (``tests/test_store.py`` compares a smoke run's history with a committed
    #: digest, so a behaviour change cannot land without the bump)
    version: ClassVar[int] = 1

    def training_version(self, cfg: Any) -> int:
        """The version of the code that trains a run of configuration ``cfg`` (its store id's
        ``method_version``): :attr:`version`, unless a method whose parts train separately (DSOL's two
        stages) says which version last changed the part ``cfg`` trains."""
        return self.version

    def first_stage_prefixes(self, cfg: Any) -> tuple[str, ...]:
        """State-dict prefixes of a second training stage that are a frozen copy of its first stage's
        weights (DSOL stage 2's audio teacher). The run store keeps them once, in the first stage's
        record, and rebuilds them with the model's ``complete_state_dict`` when it checks the second
        stage out. Default: none."""
        return ()

    # ---- configuration and model ---------------------------------------------------------------
    def default_config(self, profile: "Profile") -> Any:
        """The model configuration of this method under ``profile`` (sizes from the profile table)."""
        raise NotImplementedError(f"{type(self).__name__}.default_config")

    def with_num_classes(self, cfg: Any, num_classes: int) -> Any:
        """``cfg`` for a label set of ``num_classes`` classes (class-agnostic methods: unchanged)."""
        if cfg is not None and hasattr(cfg, "num_classes") and cfg.num_classes != num_classes:
            return replace(cfg, num_classes=num_classes)
        return cfg

    def for_build(self, cfg: Any, build_info: Mapping[str, Any]) -> Any:
        """``cfg`` for the data build described by ``build_info`` (its ``build.json``: ``classes``,
        ``split_classes``, ...). Default: :meth:`with_num_classes` with the build's class count; a
        method that needs more of the label set (T-VSL: the class names) overrides it."""
        return self.with_num_classes(cfg, len(build_info["classes"]))

    def build(self, cfg: Any) -> nn.Module:
        """The model (``forward(spec=, visual_feats= | image=) -> outputs``)."""
        raise NotImplementedError(f"{type(self).__name__}.build")

    # ---- training --------------------------------------------------------------------------------
    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss on one forward output: ``(loss, detached parts incl. 'total')``."""
        raise NotImplementedError(f"{self.name} is not trained")

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: EpochContext) -> dict[str, Any]:
        """Work before epoch ``epoch`` (0-based) trains, e.g. re-clustering (DSOL); it must depend
        only on the model's state, ``epoch`` and ``ctx`` so that a resumed run repeats it exactly.
        Returns entries for the epoch's history row."""
        return {}

    def epoch_diagnostics(self, model: nn.Module, val_sets: Sequence[Any], device: torch.device) -> dict[str, Any]:
        """Extra per-epoch entries of the training history (computed on the validation sets)."""
        return {}

    # ---- inference -------------------------------------------------------------------------------
    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Maps from a forward output: ``{"maps": [B, K, h, w]}`` (``class_aware``: ``K = C``, plus
        ``audio_probs`` ``[B, C]`` and optionally ``token_pred`` ``[B, C]``)."""
        raise NotImplementedError(f"{type(self).__name__}.predict")

    def predict_batch(self, model: nn.Module | None, batch: Mapping[str, Any], device: torch.device,
                      bf16: bool = False, channels_last: bool = False) -> dict[str, Tensor]:
        """Maps of a batch: the model's forward pass (bfloat16 autocast if ``bf16``), then
        :meth:`predict`. References override this (they read the batch, not a model output)."""
        assert model is not None
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**model_inputs(batch, device, channels_last))
            return self.predict(model, out)

    def value_label(self, model: nn.Module | None) -> str:
        """What a map's value means (the colour-bar label of the explorer)."""
        return "map value"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, modes={self.modes}, learned={self.learned})"


class MethodPredictor:
    """Turns a batch into maps with a method and its model (eval mode, no gradients, results on the
    CPU in float32). ``model`` is ``None`` for references that need none."""

    def __init__(self, method: Method, model: nn.Module | None = None, device: torch.device | str = "cpu",
                 bf16: bool = False, channels_last: bool = False):
        self.method, self.model = method, model
        self.kind = method.kind
        self.device = torch.device(device)
        self.bf16, self.channels_last = bf16, channels_last

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        was_training = self.model.training if self.model is not None else False
        if self.model is not None:
            self.model.eval()
        try:
            res = self.method.predict_batch(self.model, batch, self.device, self.bf16, self.channels_last)
        finally:
            if self.model is not None:
                self.model.train(was_training)
        return {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in res.items()}
