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
mixed precision                   off                         off (channels-last)         bf16 autocast,
                                                                                          channels-last
training batches                  fast render, fused Adam     fast render, fused Adam     fast render, fused Adam
validation                        every epoch, all val sets   every epoch, all val sets   every epoch, all val sets
early stopping                    off                         patience 3                  patience 5
================================  ==========================  ==========================  =========================

"Fast render": a whole batch mixed at once in float32 with the noise drawn from a bank of pink
noises (``inputs.train_render='fast'``, :class:`avgn.data.batching.MixtureBatcher`); "fused Adam":
the optimiser's one-pass kernel (``train.fused_optimizer``). Both are about speed only.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avgn.io import config_from_dict, config_to_dict
from avgn.config import PROFILE_NAMES, EvalConfig, InputConfig, TrainConfig, get_profile
from avgn.methods import get_method, list_methods

__all__ = [
    "METHODS",
    "REFERENCES",
    "METHOD_NAMES",
    "TrainConfig",
    "InputConfig",
    "Experiment",
    "get_experiment",
    "profile_table",
]

#: The learned methods of the registry (:mod:`avgn.methods`).
METHODS = list_methods(learned=True)
#: The non-learned references evaluated through the same code (``perfect``: the ground-truth mask
#: scored as the map, the protocol's ceiling).
REFERENCES = list_methods(learned=False)
#: Code name -> the name in tables.
METHOD_NAMES = {m: get_method(m).label for m in list_methods()}


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
        if self.profile not in PROFILE_NAMES:
            raise ValueError(f"unknown profile {self.profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
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
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Experiment":
        method = d["method"]
        model = config_from_dict(get_method(method).config_cls, d["model"])
        return cls(
            method=method,
            profile=d["profile"],
            model=model,
            train=config_from_dict(TrainConfig, d["train"]),
            inputs=config_from_dict(InputConfig, d["inputs"]),
            eval=config_from_dict(EvalConfig, d.get("eval", {})),
        )

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the configuration: a resumed run must have the same one."""
        return hashlib.sha256(self.fingerprint_json().encode()).hexdigest()[:16]

    def fingerprint_json(self) -> str:
        """The configuration as :meth:`fingerprint` hashes it (sorted JSON), without the fields that
        change how a run is loaded or checkpointed but not the run."""
        d = self.to_dict()
        # per section, as its configuration class declares: fields that do not change the run
        # (``fingerprint_ignored``), fields added after runs were stored, at the value those runs used
        # (``fingerprint_defaults``), and fields this configuration does not read (``unread_fields()``)
        for section in ("train", "inputs", "model"):
            cfg, part = getattr(self, section), d[section]
            for k in getattr(type(cfg), "fingerprint_ignored", ()):
                part.pop(k, None)
            for k, v in getattr(type(cfg), "fingerprint_defaults", {}).items():
                if k in part and part[k] == v:
                    part.pop(k)
            for k in getattr(cfg, "unread_fields", lambda: ())():
                part.pop(k, None)
        if d["train"].get("init_from") is not None:  # one run folder however its path is spelt (relative or absolute)
            d["train"]["init_from"] = str(Path(d["train"]["init_from"]).resolve())
        return json.dumps(d, sort_keys=True)

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
        """This experiment for a label set of ``num_classes`` classes (the method decides what changes)."""
        cfg = get_method(self.method).with_num_classes(self.model, num_classes)
        return self if cfg is self.model else dataclasses.replace(self, model=cfg)


    def for_build(self, build_info: dict[str, Any]) -> "Experiment":
        """This experiment for the data build described by ``build_info`` (``build.json``; the
        method decides what changes: :meth:`avgn.methods.Method.for_build`)."""
        cfg = get_method(self.method).for_build(self.model, build_info)
        return self if cfg is self.model else dataclasses.replace(self, model=cfg)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """The parameter-name prefixes of frozen weights that are reproducible from the installed
        package or the weights file, so a checkpoint or a stored run leaves them out."""
        enc = self.model.encoder
        packaged = enc.visual_backbone == "efficientnet_lite0" and enc.use_packaged_weights
        if enc.freeze_visual and (enc.pretrained_path or packaged):
            return ("visual.backbone.",)
        return ()


def get_experiment(method: str, profile: str = "cpu", **overrides: Any) -> Experiment:
    """The configuration of ``method`` (``avgn`` | ``ezvsl`` | ``mal``) under ``profile``.

    ``overrides`` are dotted field paths (see :meth:`Experiment.with_overrides`).
    """
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    prof = get_profile(profile)  # validates the name
    exp = Experiment(method=method, profile=profile, model=get_method(method).default_config(prof), train=prof.train_for(method),
                     inputs=prof.inputs, eval=prof.eval)
    return exp.with_overrides(**overrides) if overrides else exp


def profile_table(methods: tuple[str, ...] = METHODS, profiles: tuple[str, ...] = PROFILE_NAMES):
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
