"""Configuration dataclasses and the one profile table.

A *profile* is one named compute budget (``smoke`` for CI, ``cpu`` for the book's default on a
2-core machine, ``gpu`` for the paper's settings). :data:`PROFILES` holds them as literal,
frozen :class:`Profile` instances — the data build, the encoder and model sizes every method reads,
the optimisation, the inputs, the evaluation protocol, the seeds — and everything reads it:
:func:`avgn.data.build.build_dataset` (``profile.data``), each method's
:meth:`avgn.methods.Method.default_config`, :func:`avgn.experiment.get_experiment`, the run folders
(:mod:`avgn.runs`) and the chapters (:func:`get_profile`). Nothing else interprets a profile name.

Sub-configurations are frozen dataclasses owned here (:class:`TrainConfig`, :class:`InputConfig`,
:class:`EvalConfig`) or by the module that uses them (:class:`avgn.data.config.DataConfig`,
:class:`avgn.data.datasets.SpecConfig`, :class:`avgn.features.FeatureSpec`,
:class:`avgn.models.config.EncoderConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from avgn.data.config import DATA_PROFILES, DataConfig
from avgn.data.audio import SpecConfig
from avgn.features import FeatureSpec
from avgn.models.config import EncoderConfig

__all__ = ["EvalConfig", "TrainConfig", "InputConfig", "ModelSizes", "Profile", "PROFILES", "PROFILE_NAMES", "get_profile"]


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol settings (see :mod:`avgn.metrics`)."""

    mask_size: int = 224
    binarize_rule: str = "top_fraction"
    binarize_value: float = 0.5
    iou_threshold_single: float = 0.5
    iou_threshold_multi: float = 0.3


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the training data of one run.

    Attributes:
        epochs: passes over ``solo_items + concat_items + scene_items`` fresh mixtures.
        batch_size: samples per step (a batch never mixes ``concat`` and 224x224 frames).
        lr / weight_decay / optimizer: ``adam`` or ``adamw``.
        schedule: ``constant`` or ``cosine`` (to ``min_lr_ratio * lr``), after ``warmup_epochs`` of
            linear warm-up (fractions allowed).
        grad_clip: clip the global gradient norm (None: off).
        solo_items / concat_items / scene_items: training items per epoch: single-source scenes,
            ``concat`` duets composed on the fly from two solo scenes of different classes, and
            pre-built two-source ``scene`` duets with fresh gains / clips (None: one per anchor
            scene; 0: none). See :class:`avgn.data.datasets.OnTheFlyMixtureDataset`.
        resample_audio: draw each source's clip afresh from its class's training pool.
        bf16: bfloat16 autocast (CPU and CUDA).
        channels_last: channels-last memory format for the model and 4-D inputs.
        fused_optimizer: the optimiser's fused kernel (``Adam(fused=True)``: one pass over all
            parameters instead of a dozen small ops per tensor; CPU and CUDA), False: the
            per-tensor loop.
        num_workers: training batches rendered ahead in a background thread (0: in the training
            thread); evaluation loading has its own ``inputs.eval_workers``.
        torch_threads: ``torch.set_num_threads`` for the run (None: leave as is).
        early_stopping_patience: stop after this many epochs without a better validation score
            (None: off); ``min_delta`` is the smallest improvement that counts.
        deterministic: ``torch.use_deterministic_algorithms`` (CUDA also needs
            ``CUBLAS_WORKSPACE_CONFIG``, which the trainer sets).
        init_from: a finished run folder whose ``best`` weights (buffers included) initialise the
            model before training (a second training stage, fine-tuning); None: from scratch.
        negative_items: share of the training items whose audio is replaced by silence or by the
            scene's noise alone, with no sounding label (:class:`avgn.data.batching.MixtureBatcher`):
            what teaches the presence heads that nothing may sound. Only for methods whose loss
            reads the labels for its sources (``Method.trains_on_negatives``); 0 = off.
        checkpoint_minutes / checkpoint_steps: also checkpoint ``last`` *within* an epoch, every so
            many minutes of training and / or optimiser steps (None: not on that criterion), with
            the epoch's position, its running loss sums and the RNG states, so that a killed run
            loses at most that much work and resumes to bit-identical weights. Neither changes
            the run (they are not part of its fingerprint).
        micro_batches: split every batch into this many micro-batches (``indices[i::k]``), one
            forward / backward each, the gradients accumulated (each micro-batch's loss / k) before
            one optimiser step: the global batch of a larger machine on a smaller one. Batch-level
            terms (contrastive negatives, batch-norm statistics) then see one micro-batch, exactly
            as each process of a data-parallel run sees its share; buffers (batch-norm running
            statistics) follow the first micro-batch, as a data-parallel run's follow rank 0's
            share, so that N processes and one process with ``micro_batches=N`` train the same model.
    """

    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.05
    grad_clip: float | None = 5.0
    solo_items: int | None = None
    concat_items: int | None = None
    scene_items: int | None = None
    resample_audio: bool = True
    bf16: bool = False
    channels_last: bool = False
    fused_optimizer: bool = True
    num_workers: int = 1
    torch_threads: int | None = None
    early_stopping_patience: int | None = None
    min_delta: float = 1e-4
    deterministic: bool = False
    init_from: str | None = None
    checkpoint_minutes: float | None = 2.0
    checkpoint_steps: int | None = None
    micro_batches: int = 1
    negative_items: float = 0.0

    #: how a run is loaded, threaded and checkpointed, not what it trains: never in a fingerprint
    fingerprint_ignored = ("num_workers", "torch_threads", "checkpoint_minutes", "checkpoint_steps")
    #: fields added after runs were stored, at the value those runs trained with (absent = from scratch,
    #: one pass per batch, no negative items): left out of the fingerprint at that value
    fingerprint_defaults = {"micro_batches": 1, "negative_items": 0.0, "init_from": None}

    def __post_init__(self) -> None:
        if not 0.0 <= self.negative_items < 1.0:
            raise ValueError(f"negative_items is a share of the training items in [0, 1), got {self.negative_items!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (contrastive losses need negatives)")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be > 0 or None (off), got {self.checkpoint_minutes!r}")
        if self.micro_batches < 1 or (self.micro_batches > 1 and self.batch_size // 2 < 2 * self.micro_batches):
            raise ValueError(f"micro_batches={self.micro_batches} must be >= 1 and leave 2 samples per micro-batch of a half batch "
                             f"(batch_size {self.batch_size} >= {4 * max(1, self.micro_batches)})")
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise ValueError(f"checkpoint_steps must be >= 1 or None (off), got {self.checkpoint_steps!r}")


@dataclass(frozen=True)
class InputConfig:
    """What the models read.

    Attributes:
        spec: the spectrogram front end (:class:`avgn.data.datasets.SpecConfig`).
        cached_features: feed cached backbone features (needs a frozen backbone) instead of images.
        features: which cache (:class:`avgn.features.FeatureSpec`; must match the model's encoder).
        val_sets: validation sets by name ``split/task/layout`` (model selection; never test).
        val_max_items: at most this many scenes per validation set (the first ones; None: all).
        eval_batch_size: batch size of evaluation forward passes.
        eval_workers: DataLoader workers while loading evaluation sets.
        train_render: how training batches are rendered (:class:`avgn.data.batching.MixtureBatcher`):
            ``fast`` (float32 mixing, noise from a bank of 256 pink noises: about 4x cheaper on a
            CPU core) or ``exact`` (the per-item dataset's spectrograms bit for bit: float64, a fresh
            noise draw per item). Evaluation sets are always rendered exactly.
    """

    spec: SpecConfig = field(default_factory=SpecConfig)
    cached_features: bool = True
    features: FeatureSpec = field(default_factory=FeatureSpec)
    val_sets: tuple[str, ...] = ("val/solo/scene", "val/duet/concat", "val/duet/scene")
    val_max_items: int | None = None
    eval_batch_size: int = 64
    eval_workers: int = 1
    train_render: str = "fast"

    #: how evaluation sets are loaded, not what a run trains: never in a fingerprint
    fingerprint_ignored = ("eval_workers",)

    def __post_init__(self) -> None:
        if self.train_render not in ("fast", "exact"):
            raise ValueError(f"inputs.train_render must be 'fast' or 'exact', got {self.train_render!r}")


@dataclass(frozen=True)
class ModelSizes:
    """The sizes a profile gives every method (a method may document a departure, e.g.
    Mix-and-Localize keeps its public 128-d embedding): embedding dim ``D``, transformer depth,
    attention heads and MLP ratio (AVGN)."""

    dim: int = 512
    depth: int = 3
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class Profile:
    """All settings of one compute budget (see the module docstring)."""

    name: str
    data: DataConfig
    encoder: EncoderConfig
    sizes: ModelSizes
    train: TrainConfig
    inputs: InputConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds of the comparison tables (mean ± std)
    demo_samples: int = 400  # samples in the synthetic protocol demonstrations (chapter 00)
    #: a method's departures from ``train`` under this profile, ``((method, ((field, value), ...)), ...)``
    #: (e.g. more epochs for a method that is still improving when the shared schedule ends, or the
    #: training layouts a method's loss can use); :meth:`train_for` applies them
    method_train: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def __post_init__(self) -> None:
        known = {f.name for f in fields(TrainConfig)}
        for method, changes in self.method_train:
            bad = sorted({k for k, _ in changes} - known)
            if bad:
                raise ValueError(f"profile {self.name!r}: method_train[{method!r}] sets unknown TrainConfig fields {bad}")

    def train_for(self, method: str) -> TrainConfig:
        """The training configuration of ``method`` under this profile: ``train`` with the method's
        entries of ``method_train`` applied."""
        return replace(self.train, **dict(dict(self.method_train).get(method, ())))


_LITE0 = FeatureSpec(backbone="efficientnet_lite0", features="head")

#: The profile table (see :mod:`avgn.experiment` for what the ``cpu`` profile reduces and why).
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        data=DATA_PROFILES["smoke"],
        encoder=EncoderConfig(visual_backbone="efficientnet_lite0", freeze_visual=True, audio_width=0.125),
        sizes=ModelSizes(dim=64, depth=1, heads=4, mlp_ratio=2.0),
        train=TrainConfig(
            epochs=4, batch_size=16, lr=2e-3, schedule="constant", warmup_epochs=0.0,
            solo_items=160, concat_items=160, scene_items=32, num_workers=0,
        ),
        inputs=InputConfig(spec=SpecConfig(win_ms=16.0, hop_ms=50.0), cached_features=True, features=_LITE0,
                           eval_batch_size=32, eval_workers=0),
        seeds=(0,),
        demo_samples=24,
    ),
    "cpu": Profile(
        name="cpu",
        data=DATA_PROFILES["cpu"],
        encoder=EncoderConfig(visual_backbone="efficientnet_lite0", freeze_visual=True, audio_width=0.5),
        sizes=ModelSizes(dim=128, depth=2, heads=4, mlp_ratio=2.0),
        train=TrainConfig(
            epochs=6, batch_size=32, lr=1e-3, schedule="cosine", warmup_epochs=0.5,
            solo_items=2000, concat_items=2000, scene_items=1000, num_workers=0, early_stopping_patience=3, channels_last=True,
        ),
        inputs=InputConfig(spec=SpecConfig(win_ms=16.0, hop_ms=50.0), cached_features=True, features=_LITE0,
                           eval_batch_size=64, eval_workers=1),
        seeds=(0, 1, 2),
        demo_samples=400,
        # EZ-VSL at its temperature 0.1 is still improving when the shared 6-epoch schedule ends
        # (validation flat from epoch ~13 of 20, README "EZ-VSL's temperature")
        # AVGN: its validation duet presence F1 still rises until epoch 12-16, so it trains 16
        # epochs, every one (chapter 2, "Does more training help?"; the 6-epoch schedule with early
        # stopping is the variant ``avgn-short``)
        method_train=(("ezvsl", (("epochs", 20),)), ("avgn", (("epochs", 16), ("early_stopping_patience", None))),
                      # DSOL's stage 1 and T-VSL learn their classes from the audio as slowly as AVGN: the same budget
                      # (chapters 7 and 9; DSOL's stage 2 keeps the shared schedule: avgnbook.variants.DSOL_VARIANT)
                      ("dsol", (("epochs", 16), ("early_stopping_patience", None))),
                      ("tvsl", (("epochs", 16), ("early_stopping_patience", None)))),
    ),
    "gpu": Profile(
        name="gpu",
        data=DATA_PROFILES["gpu"],
        encoder=EncoderConfig(visual_backbone="efficientnet_lite0", freeze_visual=False, audio_width=1.0),
        sizes=ModelSizes(dim=512, depth=3, heads=8, mlp_ratio=4.0),  # the paper's
        train=TrainConfig(
            epochs=20, batch_size=128, lr=1e-4, schedule="constant", warmup_epochs=0.0, grad_clip=None,
            solo_items=14000, concat_items=14000, scene_items=8000, bf16=True, channels_last=True,
            num_workers=8, early_stopping_patience=5,
        ),
        inputs=InputConfig(spec=SpecConfig(), cached_features=False, features=_LITE0, eval_batch_size=128, eval_workers=8),
        seeds=(0, 1, 2),
        demo_samples=2000,
    ),
}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def get_profile(name: str) -> Profile:
    """The :class:`Profile` called ``name`` (one of :data:`PROFILE_NAMES`).

    Raises:
        ValueError: if ``name`` is not a known profile.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]

