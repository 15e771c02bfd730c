"""Checkpoints: atomic, resumable, and readable without unpickling arbitrary objects.

A checkpoint called ``name`` (``last`` or ``best``) in ``<run_dir>/checkpoints/`` is three files:

==============================  ===========================================================
file                            content
==============================  ===========================================================
``<name>-e<E>-s<S>.safetensors``  model weights (``safetensors``; frozen, reproducible backbone
                                weights can be left out, see ``exclude_prefixes``)
``<name>-e<E>-s<S>.pt``           optimiser, scheduler and RNG states (``torch.save``; loads
                                with ``torch.load(weights_only=True)``: tensors, dicts, lists,
                                numbers and strings only)
``<name>.json``                   the *commit* file: epoch, step, best metric, config, the two
                                file names above and their SHA-256, and the SHA-256 of its own
                                content (``commit_sha256``)
``<name>.prev.json``              the commit file of the previous checkpoint of that name, whose
                                files are kept until the next save
==============================  ===========================================================

Writes are atomic (:func:`avgn.io.atomic_path`): every file goes to a temporary file in the same
folder and is moved into place with :func:`os.replace`; the JSON commit file is written last and only then are the files of the
checkpoint before the previous one deleted. A crash at any moment therefore leaves either the previous or the new
checkpoint complete and valid (orphans of an interrupted write are removed by the next save).

Corruption is refused, never loaded: a weights or state file whose SHA-256 differs from the commit
file (a truncated ``.safetensors``, say), a commit file edited after it was written, or one that is
not JSON raises :class:`CheckpointError` naming the file, the previous checkpoint (still complete:
``<name>.prev.json``) and the one command that makes it current again.

RNG states (:func:`capture_rng_state` / :func:`restore_rng_state`): Python's ``random`` (its
625-word Mersenne-Twister state as an int64 tensor), NumPy's legacy global generator (the 624-word
key as an int64 tensor plus position and Gaussian cache), torch's CPU generator and every CUDA
device's generator (byte tensors).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from avgn import io as _io
from avgn.io import atomic_write_bytes, atomic_write_text, file_sha256  # noqa: F401 (re-exported: one atomic writer)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_save_safetensors",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "load_weights",
    "checkpoint_dir",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model."""


# --------------------------------------------------------------------------------------------------
# atomic file writes
# --------------------------------------------------------------------------------------------------
def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file next to ``path``, then move it into place
    (:func:`avgn.io.atomic_path`: fsync + :func:`os.replace`; the temporary file is removed on error)."""
    from avgn.io import atomic_path

    with atomic_path(path) as tmp:
        write(str(tmp))
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN is written as ``NaN``, numpy/tensors as lists)."""
    return _io.atomic_write_json(path, obj, indent=2, default=_json_default)


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` atomically."""
    return _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` atomically (tensors are made contiguous CPU copies)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return _atomic(Path(path), lambda tmp: save_file(clean, tmp, metadata=metadata))


# --------------------------------------------------------------------------------------------------
# RNG states as weights-only content
# --------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch (CPU) and CUDA, as tensors / numbers / strings."""
    version, words, gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(words, dtype=torch.int64),
            "gauss_next": [] if gauss is None else [float(gauss)],
        },
        "numpy": {
            "name": str(np_name),
            "key": torch.from_numpy(np.asarray(np_key, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    gauss = py["gauss_next"][0] if len(py["gauss_next"]) else None
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["key"].numpy().astype(np.uint32), int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _model_tensors(model: nn.Module, exclude_prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    prefixes = tuple(exclude_prefixes)
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for k, v in sd.items():
        if prefixes and k.startswith(prefixes):
            continue
        if v.numel():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
            if key in seen:
                v = v.clone()  # safetensors refuses shared storage; load_state_dict restores ties
            seen.add(key)
        out[k] = v
    return out


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    *,
    name: str = "last",
    epoch: int,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    state: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    include_rng: bool = True,
    extra: dict[str, Any] | None = None,
    exclude_prefixes: Iterable[str] = (),
) -> Path:
    """Write checkpoint ``name`` of ``model`` (+ optimiser / scheduler / RNG) atomically.

    Args:
        run_dir: the run folder (files go to ``run_dir/checkpoints``).
        name: ``last`` (for resuming) or ``best`` (model selection), or any ``[A-Za-z0-9_]`` name.
        epoch / step: completed epochs and optimiser steps.
        state: JSON-ready training state (best metric, history, early-stopping counters, ...).
        config: JSON-ready run configuration (stored in the commit file).
        extra: more weights-only content for the ``.pt`` file.
        exclude_prefixes: state_dict key prefixes not written (e.g. a frozen packaged backbone,
            ``visual.backbone.``); :func:`load_checkpoint` accepts exactly these as missing.

    Returns:
        The path of the JSON commit file.
    """
    if not name.replace("_", "").isalnum():
        raise ValueError(f"checkpoint name must be alphanumeric/underscore, got {name!r}")
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-e{epoch:04d}-s{step:08d}"
    weights_path = folder / f"{stem}.safetensors"
    atomic_save_safetensors(weights_path, _model_tensors(model, exclude_prefixes), metadata={"format": str(CHECKPOINT_FORMAT)})
    files = {"weights": weights_path.name}
    payload: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "epoch": int(epoch), "step": int(step)}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if include_rng:
        payload["rng"] = capture_rng_state()
    if extra:
        payload["extra"] = extra
    train_path = folder / f"{stem}.pt"
    atomic_torch_save(train_path, payload)
    files["train_state"] = train_path.name
    commit = {
        "format": CHECKPOINT_FORMAT,
        "name": name,
        "epoch": int(epoch),
        "step": int(step),
        "files": files,
        "sha256": {k: file_sha256(folder / v) for k, v in files.items()},
        "exclude_prefixes": list(exclude_prefixes),
        "state": state or {},
        "config": config or {},
    }
    commit["commit_sha256"] = _commit_hash(commit)
    keep = set(files.values())
    current = folder / f"{name}.json"
    try:  # the checkpoint being replaced becomes the previous one (if it is sound), its files kept
        prev = read_checkpoint_info(run_dir, name)
    except CheckpointError:
        prev = None
    if prev is not None and prev["files"] != files:
        atomic_write_text(folder / f"{name}.prev.json", current.read_text())
        keep |= set(prev["files"].values())
    commit_path = atomic_write_json(current, commit)
    # the new checkpoint is committed: remove older files and orphans of crashed writes
    for p in folder.iterdir():
        if p.name.startswith(f"{name}-e") and p.name not in keep:
            p.unlink(missing_ok=True)
        elif p.name.startswith(f".{name}-e") and ".tmp" in p.name:
            p.unlink(missing_ok=True)
    return commit_path


def _commit_hash(commit: dict[str, Any]) -> str:
    """SHA-256 of a commit file's content (without its ``commit_sha256``), as read back from JSON."""
    body = json.loads(json.dumps({k: v for k, v in commit.items() if k != "commit_sha256"}, default=_json_default))
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _refuse(path: Path, name: str, problem: str) -> CheckpointError:
    """The error for a corrupt checkpoint ``name``: what is wrong, and how to fall back on the previous one."""
    prev = path.parent / f"{name}.prev.json"
    hint = "no previous checkpoint is kept; start the run again in a new folder"
    if prev.is_file():
        try:
            p = json.loads(prev.read_text())
            hint = (f"the previous checkpoint (epoch {p.get('epoch')}, step {p.get('step')}) is intact: make it current with "
                    f"`mv {prev} {path.parent / (name + '.json')}` and resume")
        except json.JSONDecodeError:
            pass
    return CheckpointError(f"checkpoint {name!r}: {problem}; refusing to load it ({hint})")


def read_checkpoint_info(run_dir: str | Path, name: str = "last") -> dict[str, Any] | None:
    """The commit JSON of checkpoint ``name``, or None if there is none."""
    path = checkpoint_dir(run_dir) / f"{name}.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # cannot happen with atomic writes: the file was damaged
        raise _refuse(path, name, f"its commit file {path} is not valid JSON ({exc})") from exc
    if not isinstance(info, dict) or "files" not in info:
        raise _refuse(path, name, f"its commit file {path} is not a checkpoint commit file")
    if "commit_sha256" in info and _commit_hash(info) != info["commit_sha256"]:
        raise _refuse(path, name, f"its commit file {path} was modified after it was written (its content hash differs)")
    return info


def load_weights(model: nn.Module, path: str | Path, exclude_prefixes: Iterable[str] = ()) -> None:
    """Load a ``.safetensors`` weights file into ``model``; only keys under ``exclude_prefixes`` may be missing.
    A model with a ``complete_state_dict(sd)`` method first fills in the weights it derives from others."""
    from safetensors.torch import load_file

    sd = load_file(str(path), device="cpu")
    complete = getattr(model, "complete_state_dict", None)
    if complete is not None:  # weights the model derives from others (DSOL stage 2's frozen copy of stage 1)
        sd = complete(sd)
    own = model.state_dict()
    prefixes = tuple(exclude_prefixes)
    missing = [k for k in own if k not in sd and not (prefixes and k.startswith(prefixes))]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"weights {path} do not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {mismatched[:5]} (was the run made with another configuration?)"
        )
    model.load_state_dict(sd, strict=False)


def load_checkpoint(
    run_dir: str | Path,
    model: nn.Module | None = None,
    *,
    name: str = "last",
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = False,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
) -> dict[str, Any] | None:
    """Load checkpoint ``name`` into ``model`` / ``optimizer`` / ``scheduler``; optionally restore RNGs.

    Returns the commit JSON (with ``epoch``, ``step``, ``state``, ``config``) plus ``extra`` from the
    ``.pt`` file, or None if the run has no such checkpoint.

    Raises:
        CheckpointError: a referenced file is missing or its SHA-256 differs (``verify``).
    """
    info = read_checkpoint_info(run_dir, name)
    if info is None:
        return None
    folder = checkpoint_dir(run_dir)
    for key, fname in info["files"].items():
        p = folder / fname
        if not p.is_file():
            raise _refuse(folder / f"{name}.json", name, f"it refers to {p}, which is missing")
        if verify and info.get("sha256", {}).get(key) and file_sha256(p) != info["sha256"][key]:
            raise _refuse(folder / f"{name}.json", name, f"its file {p} is corrupt (truncated or modified: SHA-256 differs from {name}.json)")
    if model is not None:
        load_weights(model, folder / info["files"]["weights"], info.get("exclude_prefixes", ()))
    need_pt = optimizer is not None or scheduler is not None or restore_rng
    payload: dict[str, Any] = {}
    if need_pt or "train_state" in info["files"]:
        payload = torch.load(folder / info["files"]["train_state"], map_location=map_location, weights_only=True)
    if optimizer is not None:
        if "optimizer" not in payload:
            raise CheckpointError(f"checkpoint {name!r} has no optimiser state")
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and "scheduler" in payload:
        scheduler.load_state_dict(payload["scheduler"])
    if restore_rng:
        if "rng" not in payload:
            raise CheckpointError(f"checkpoint {name!r} has no RNG state")
        rng = payload["rng"]
        if isinstance(map_location, torch.device) or map_location != "cpu":
            rng = dict(rng, torch=rng["torch"].cpu(), cuda=[s.cpu() for s in rng.get("cuda", [])])
        restore_rng_state(rng)
    out = dict(info)
    out["extra"] = payload.get("extra", {})
    return out
