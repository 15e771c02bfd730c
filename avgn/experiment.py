"""Experiment configurations: one frozen dataclass bundle per (method, profile).

An :class:`Experiment` holds everything a training run depends on besides the seed and the data
folder: the model configuration (:mod:`avgn.models.config`), the optimisation (:class:`TrainConfig`),
the inputs (:class:`InputConfig`: spectrogram, cached backbone features, validation sets) and the
evaluation protocol (:class:`avgn.config.EvalConfig`). :func:`get_experiment` returns it for a
method (``avgn``, ``ezvsl``, ``mal``) and a profile (``smoke``, ``cpu``, ``gpu``);
:meth:`Experiment.with_overrides` changes single fields by dotted name (``"train.epochs"``).

The three profiles
------------------

================================  ==========================  ==========================  =========================
setting                           ``smoke`` (CI, seconds)     ``cpu`` (book default)      ``gpu`` (paper settings)
================================  ==========================  ==========================  =========================
data build (``avgn data build``)  smoke (2 solo/class)        cpu (100 solo/class)        gpu (700 solo/class)
visual backbone                   EfficientNet-Lite0,         EfficientNet-Lite0,         EfficientNet-Lite0,
                                  ImageNet, **frozen,         ImageNet, **frozen,         ImageNet, **trainable**
                                  cached features**           cached features**           (ResNet-18 with a weights
                                                                                          file: see below)
frame size / visual map           224 x 224 / 7 x 7           224 x 224 / 7 x 7           224 x 224 / 7 x 7
embedding dim ``D`` / heads       64 / 4                      128 / 4                     512 / 8
transformer depth (AVGN)          1                           2                           3
audio ResNet-18 width             0.125 (8-64 channels)       0.25 (16-128 channels)      1.0 (64-512 channels)
spectrogram ``[F, T]``            129 x 61 (16 ms window,     129 x 61 (16 ms window,     401 x 121 (50 ms window,
                                  50 ms hop)                  50 ms hop)                  25 ms hop: the paper's)
MAL: ``D`` / hidden               64 / 64                     128 / 128                   128 / 128 (public code)
training items / epoch            160 solo + 160 concat       2000 solo + 2000 concat     14000 solo + 14000 concat
                                  duets + 32 scene duets      duets + 1000 scene duets    duets + 8000 scene duets
epochs / batch                    4 / 16                      6 / 32                      20 / 128
optimiser                         Adam 2e-3, constant         Adam 1e-3, cosine, half an  Adam 1e-4 (paper),
                                                              epoch of warm-up            constant
temperature ``tau``               0.03                        0.03                        0.03 (paper)
mixed precision                   off                         off                         bf16 autocast,
                                                                                          channels-last
validation                        every epoch, all val sets   every epoch, all val sets   every epoch, all val sets
early stopping                    off                         patience 3                  patience 5
================================  ==========================  ==========================  =========================

What the ``cpu`` profile reduces, and why: the backbone is frozen and its features cached
(:mod:`avgn.features`), so only the 1x1 projection of the visual branch trains; ``D``, the depth and
the audio width are 4x / 1.5x / 4x smaller; the spectrogram has a 16 ms window and a 50 ms hop (129
x 61 instead of the paper's 401 x 121: 6x fewer cells); it trains for 6 epochs over 5,000 fresh
mixtures each, with a larger learning rate than the paper's (1e-3 with warm-up and cosine decay:
there are ~940 steps instead of tens of thousands). Frames stay 224 x 224, so maps have the paper's
7 x 7 resolution. The token classifier, the presence heads, the grouping and the per-source
contrastive loss are unchanged. The ``smoke`` profile is sized for CI: its chapters run in
seconds, and ``tests/test_train.py`` trains it (for 20 epochs) to check that AVGN learns from the
audio with large margins.

Model selection scores the validation sets with ground-truth classes *and*, for a method that picks
its sources itself (AVGN), with its own predicted selection (:func:`avgn.evaluate.selection_score`);
the presence threshold of the predicted selection is then chosen on the validation sets
(:func:`avgn.evaluate.choose_presence_threshold`) and stored in ``run.json``.

The ``gpu`` profile follows the paper (224 x 224, ``D = 512``, depth 3, Adam 1e-4, batch 128,
``tau = 0.03``, trainable backbone) with one necessary substitution: no ImageNet ResNet-18 ships
with this project (nothing is downloaded), so the trainable backbone is the packaged ImageNet
EfficientNet-Lite0. With a torchvision ResNet-18 weights file, ``with_overrides(**{
"model.encoder.visual_backbone": "resnet18", "model.encoder.pretrained_path": PATH})`` gives the
paper's trunk exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from avgn.config import EvalConfig, get_profile
from avgn.data.datasets import SpecConfig
from avgn.features import FeatureSpec
from avgn.models.config import PAPER_DESIGN, AVGNConfig, EncoderConfig, EZVSLConfig, MALConfig

__all__ = [
    "METHODS",
    "REFERENCES",
    "TrainConfig",
    "InputConfig",
    "Experiment",
    "get_experiment",
    "profile_table",
    "Variant",
    "MAIN_VARIANTS",
    "BASELINE_DESIGN_VARIANTS",
    "PAPER_DESIGN_VARIANT",
    "DEPTH_VARIANTS",
    "ASSIGNMENT_VARIANTS",
    "LOSS_VARIANTS",
]

METHODS = ("avgn", "ezvsl", "mal")
#: The non-learned references evaluated through the same code (``perfect``: the ground-truth mask
#: scored as the map, the protocol's ceiling).
REFERENCES = ("centre", "object", "perfect")
METHOD_NAMES = {
    "avgn": "AVGN", "ezvsl": "EZ-VSL", "mal": "Mix-and-Localize", "centre": "centre prior", "object": "object prior",
    "perfect": "perfect map",
}


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
        num_workers: training batches rendered ahead in a background thread (0: in the training
            thread); evaluation loading has its own ``inputs.eval_workers``.
        torch_threads: ``torch.set_num_threads`` for the run (None: leave as is).
        early_stopping_patience: stop after this many epochs without a better validation score
            (None: off); ``min_delta`` is the smallest improvement that counts.
        deterministic: ``torch.use_deterministic_algorithms`` (CUDA also needs
            ``CUBLAS_WORKSPACE_CONFIG``, which the trainer sets).
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
    num_workers: int = 1
    torch_threads: int | None = None
    early_stopping_patience: int | None = None
    min_delta: float = 1e-4
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (contrastive losses need negatives)")


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
    """

    spec: SpecConfig = field(default_factory=SpecConfig)
    cached_features: bool = True
    features: FeatureSpec = field(default_factory=FeatureSpec)
    val_sets: tuple[str, ...] = ("val/solo/scene", "val/duet/concat", "val/duet/scene")
    val_max_items: int | None = None
    eval_batch_size: int = 64
    eval_workers: int = 1


ModelConfig = AVGNConfig | EZVSLConfig | MALConfig
_MODEL_CFG = {"avgn": AVGNConfig, "ezvsl": EZVSLConfig, "mal": MALConfig}


@dataclass(frozen=True)
class Experiment:
    """A method's complete configuration for one profile. ``num_classes`` is set from the data."""

    method: str
    profile: str
    model: Any
    train: TrainConfig
    inputs: InputConfig
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        enc = self.model.encoder
        if self.inputs.cached_features:
            if not enc.freeze_visual:
                raise ValueError("cached_features needs a frozen visual backbone (model.encoder.freeze_visual=True)")
            f = self.inputs.features
            if (f.backbone, f.features, f.pretrained_path) != (enc.visual_backbone, enc.efficientnet_features, enc.pretrained_path):
                raise ValueError(f"inputs.features {f} does not match the model's encoder {enc}")

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Experiment":
        method = d["method"]
        model = _build(_MODEL_CFG[method], d["model"])
        return cls(
            method=method,
            profile=d["profile"],
            model=model,
            train=_build(TrainConfig, d["train"]),
            inputs=_build(InputConfig, d["inputs"]),
            eval=_build(EvalConfig, d.get("eval", {})),
        )

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the configuration: a resumed run must have the same one."""
        d = self.to_dict()
        d["train"].pop("num_workers", None)  # how data are loaded does not change the run
        d["train"].pop("torch_threads", None)
        d["inputs"].pop("eval_workers", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, **overrides: Any) -> "Experiment":
        """Replace fields by dotted path, e.g. ``with_overrides(**{"train.epochs": 2, "model.dim": 64})``."""
        d = self.to_dict()
        for path, value in overrides.items():
            node = d
            keys = path.split(".")
            for k in keys[:-1]:
                if k not in node or not isinstance(node[k], dict):
                    raise KeyError(f"no configuration section {path!r}")
                node = node[k]
            if keys[-1] not in node:
                raise KeyError(f"no configuration field {path!r}")
            node[keys[-1]] = value
        if "model.dim" in overrides:
            d["model"]["encoder"]["dim"] = overrides["model.dim"]
        return Experiment.from_dict(d)

    def with_num_classes(self, num_classes: int) -> "Experiment":
        if self.method != "avgn" or self.model.num_classes == num_classes:
            return self
        return replace(self, model=replace(self.model, num_classes=num_classes))


def _build(cls: type, d: dict[str, Any]) -> Any:
    """Dataclass from a dict, recursing into nested dataclass fields and restoring tuples."""
    kw = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in d.items():
        if name not in hints:
            raise KeyError(f"{cls.__name__} has no field {name!r}")
        default = hints[name].default_factory() if hints[name].default_factory is not dataclasses.MISSING else hints[name].default  # type: ignore[misc]
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value)
        elif isinstance(value, list) and (isinstance(default, tuple) or default is dataclasses.MISSING or default is None):
            value = tuple(value)
        kw[name] = value
    return cls(**kw)


# --------------------------------------------------------------------------------------------------
# profiles
# --------------------------------------------------------------------------------------------------
def _encoder(profile: str) -> EncoderConfig:
    frozen = profile in ("smoke", "cpu")
    width = {"smoke": 0.125, "cpu": 0.25, "gpu": 1.0}[profile]
    return EncoderConfig(visual_backbone="efficientnet_lite0", freeze_visual=frozen, audio_width=width)


def _spec(profile: str) -> SpecConfig:
    if profile == "smoke":
        return SpecConfig(win_ms=16.0, hop_ms=50.0)
    if profile == "cpu":
        return SpecConfig(win_ms=16.0, hop_ms=50.0)
    return SpecConfig()  # the paper's 50 ms / 25 ms


def _model(method: str, profile: str) -> Any:
    enc = _encoder(profile)
    if method == "avgn":
        if profile == "gpu":
            return AVGNConfig(encoder=enc)  # the paper's sizes (D=512, depth 3, 8 heads)
        dim, depth = {"smoke": (64, 1), "cpu": (128, 2)}[profile]
        return AVGNConfig(dim=dim, depth=depth, heads=4, mlp_ratio=2.0, encoder=enc)
    if method == "ezvsl":
        return EZVSLConfig(dim={"smoke": 64, "cpu": 128, "gpu": 512}[profile], encoder=enc)
    d = {"smoke": 64, "cpu": 128, "gpu": 128}[profile]
    return MALConfig(dim=d, hidden=d, encoder=enc)


def _train(profile: str) -> TrainConfig:
    if profile == "smoke":
        return TrainConfig(
            epochs=4, batch_size=16, lr=2e-3, schedule="constant", warmup_epochs=0.0,
            solo_items=160, concat_items=160, scene_items=32, num_workers=0,
        )
    if profile == "cpu":
        return TrainConfig(
            epochs=6, batch_size=32, lr=1e-3, schedule="cosine", warmup_epochs=0.5,
            solo_items=2000, concat_items=2000, scene_items=1000, num_workers=1, early_stopping_patience=3,
        )
    return TrainConfig(
        epochs=20, batch_size=128, lr=1e-4, schedule="constant", warmup_epochs=0.0, grad_clip=None,
        solo_items=14000, concat_items=14000, scene_items=8000, bf16=True, channels_last=True,
        num_workers=8, early_stopping_patience=5,
    )


def get_experiment(method: str, profile: str = "cpu", **overrides: Any) -> Experiment:
    """The configuration of ``method`` (``avgn`` | ``ezvsl`` | ``mal``) under ``profile``.

    ``overrides`` are dotted field paths (see :meth:`Experiment.with_overrides`).
    """
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    prof = get_profile(profile)  # validates the name
    model = _model(method, profile)
    inputs = InputConfig(
        spec=_spec(profile),
        cached_features=profile in ("smoke", "cpu"),
        features=FeatureSpec(backbone=model.encoder.visual_backbone, features=model.encoder.efficientnet_features),
        eval_batch_size={"smoke": 32, "cpu": 64, "gpu": 128}[profile],
        eval_workers={"smoke": 0, "cpu": 1, "gpu": 8}[profile],
    )
    exp = Experiment(method=method, profile=profile, model=model, train=_train(profile), inputs=inputs, eval=prof.eval)
    return exp.with_overrides(**overrides) if overrides else exp


def profile_table(methods: tuple[str, ...] = METHODS, profiles: tuple[str, ...] = ("smoke", "cpu", "gpu")):
    """A :class:`pandas.DataFrame` of the main settings of every (method, profile) (for the book)."""
    import pandas as pd

    rows = []
    for m in methods:
        for p in profiles:
            e = get_experiment(m, p)
            t, enc, sp = e.train, e.model.encoder, e.inputs.spec
            rows.append(
                {
                    "method": METHOD_NAMES[m],
                    "profile": p,
                    "backbone": enc.visual_backbone + (" (frozen, cached)" if e.inputs.cached_features else " (trainable)"),
                    "D": e.model.dim,
                    "depth": getattr(e.model, "depth", None),
                    "audio width": enc.audio_width,
                    "spectrogram": f"{sp.shape[1]}x{sp.shape[2]}",
                    "items/epoch": sum(x or 0 for x in (t.solo_items, t.concat_items, t.scene_items)),
                    "epochs": t.epochs,
                    "batch": t.batch_size,
                    "lr": t.lr,
                    "schedule": t.schedule,
                    "bf16": t.bf16,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# the variants the book compares
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A named configuration compared in the book.

    Attributes:
        label: the name in tables and figures.
        method: ``avgn`` | ``ezvsl`` | ``mal``.
        overrides: training-time changes to the profile's experiment, as ``(dotted field, value)``
            pairs (:meth:`Experiment.with_overrides`); a variant with overrides trains its own runs.
        eval_overrides: inference-time changes to the model configuration, ``(field, value)``
            pairs, applied to the *trained weights of the variant without them* (e.g. EZ-VSL's
            object-prior fusion ``alpha``): no extra training.
        name: the folder of the variant's runs / evaluations, ``<runs>/variants/<name>``; ``None``
            for the method's plain runs (``<runs>/<profile>/<method>-seed<S>``).
    """

    label: str
    method: str
    overrides: tuple[tuple[str, Any], ...] = ()
    eval_overrides: tuple[tuple[str, Any], ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if (self.overrides or self.eval_overrides) and not self.name:
            raise ValueError(f"variant {self.label!r} changes the configuration, so it needs its own folder name")

    @property
    def training(self) -> "Variant":
        """The variant whose runs hold the weights (itself, less any inference-time change)."""
        if not self.eval_overrides:
            return self
        return Variant(self.label, self.method, self.overrides, (), self.name if self.overrides else None)


#: Chapter 3: every method, and the two readings of AVGN's and EZ-VSL's public code.
MAIN_VARIANTS: tuple[Variant, ...] = (
    Variant("AVGN", "avgn"),
    Variant("AVGN (public-code target)", "avgn", overrides=(("model.loc_target", "public"),), name="avgn-public"),
    Variant("EZ-VSL", "ezvsl"),
    Variant("EZ-VSL + object prior", "ezvsl", eval_overrides=(("object_prior_alpha", 0.4),), name="ezvsl-ogl"),
    Variant("Mix-and-Localize", "mal"),
)
#: Chapter 3, "Do the baselines learn?": the baselines as their public code (EZ-VSL: no batch norm on
#: the audio embedding) or this book's earlier adaptation (Mix-and-Localize: a walk over single
#: regions) builds them, against which the defaults' departures are measured.
BASELINE_DESIGN_VARIANTS: tuple[Variant, ...] = (
    Variant("EZ-VSL (public code: no audio batch norm)", "ezvsl", overrides=(("model.audio_norm", "none"),), name="ezvsl-public"),
    Variant("Mix-and-Localize (region graph)", "mal", overrides=(("model.graph", "regions"),), name="mal-regions"),
)
#: Chapter 2: AVGN exactly as the paper and its released code design it (shared presence head, every
#: loss weight 1), against which chapter 2 diagnoses why it does not learn from the audio.
PAPER_DESIGN_VARIANT = Variant(
    "AVGN (paper design)", "avgn", overrides=tuple((f"model.{k}", v) for k, v in PAPER_DESIGN.items()), name="avgn-paper-design",
)
#: Chapter 4: depth of the per-modality transformers (the profile's own depth is the plain AVGN run).
DEPTH_VARIANTS: tuple[Variant, ...] = tuple(
    Variant(f"depth {d}", "avgn", overrides=(("model.depth", d),), name=f"avgn-depth{d}") for d in (1, 3, 6, 12)
)
#: Chapter 4: how features are assigned to class tokens (Softmax is the plain AVGN run).
ASSIGNMENT_VARIANTS: tuple[Variant, ...] = (
    Variant("Hard-Softmax", "avgn", overrides=(("model.assignment", "hard"),), name="avgn-hard"),
    Variant("Gumbel-Softmax", "avgn", overrides=(("model.assignment", "gumbel"),), name="avgn-gumbel"),
)
#: Chapter 4: losses removed (Eq. 10 against the public-code target is in :data:`MAIN_VARIANTS`).
LOSS_VARIANTS: tuple[Variant, ...] = (
    Variant("without token loss", "avgn", overrides=(("model.w_token", 0.0),), name="avgn-no-token"),
    Variant("without presence losses", "avgn", overrides=(("model.w_audio_cls", 0.0), ("model.w_visual_cls", 0.0)), name="avgn-no-presence"),
)
