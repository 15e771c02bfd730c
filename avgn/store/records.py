"""The committed run store: one folder per run, a record, its weights and its evaluations.

Layout (``store/`` at the repository root; ``store/README.md`` explains it to a reader)::

    store/<profile>/<key>/record.json          the record (written last: its presence means complete)
    store/<profile>/<key>/weights.safetensors  the best-on-validation weights, fp16, trainable part only
    store/<profile>/<key>/config.json          the run's configuration (as ``avgn train`` wrote it)
    store/<profile>/<key>/history.json         per-epoch losses and validation metrics
    store/<profile>/<key>/run.json             the training summary (threshold, timings, machine)
    store/<profile>/<key>/eval_<tag>.json|.csv|_samples.csv.gz   each evaluation the chapters read

``record.json`` carries the run's key, id and identity (:mod:`avgn.store.plan`), the code revision,
the machine, wall time, samples/s, the presence threshold, the evaluations' versions, and the SHA-256
of every other file. :meth:`RunStore.read` refuses a record whose files are missing, truncated or
edited (hash mismatch), or that belongs to another profile or data build, with one line naming the
file and the command that retrains the run; nothing is silently retrained or skipped.

Weights are stored in fp16 (integer buffers as they are) and every stored evaluation is computed
*from the stored weights* (:func:`avgn.store.queue.finish_run` materialises them first), so
re-evaluating a record from its weights reproduces its numbers.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avgn.checkpoint import atomic_save_safetensors, atomic_write_json, atomic_write_text
from avgn.io import file_sha256

__all__ = ["STORE_DIR", "RECORD_FORMAT", "StoreError", "StoredRun", "RunStore", "fp16_weights", "train_command"]

ROOT = Path(__file__).resolve().parents[2]
#: The committed store at the repository root.
STORE_DIR = ROOT / "store"
RECORD_FORMAT = 1
_RUN_FILES = ("config.json", "history.json", "run.json")


class StoreError(RuntimeError):
    """A store record that cannot be used as it is (one line: the file or key, and the fix)."""


def train_command(key: str, profile: str) -> str:
    """The command that (re)trains and stores one run of the plan."""
    return f"avgn runs train --profile {profile} --keys {key}"


def fp16_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors rounded to fp16 (integer buffers, e.g. batch-norm counters, unchanged)."""
    return {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}


@dataclass(frozen=True)
class StoredRun:
    """A verified record and its folder."""

    key: str
    folder: Path
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return self.record["id"]

    def path(self, name: str) -> Path:
        return self.folder / name

    def eval_tags(self) -> list[str]:
        return sorted(self.record.get("evals", {}))


class RunStore:
    """The store at ``root`` (default :data:`STORE_DIR`) for one ``profile``."""

    def __init__(self, profile: str, root: str | Path | None = None) -> None:
        self.profile = profile
        self.root = Path(root) if root is not None else STORE_DIR
        self.base = self.root / profile

    # ---- paths ------------------------------------------------------------------------------------
    def folder(self, key: str) -> Path:
        return self.base / key

    def keys(self) -> list[str]:
        """The keys with a record (complete or not checked), sorted."""
        if not self.base.is_dir():
            return []
        return sorted(str(p.parent.relative_to(self.base)) for p in self.base.rglob("record.json"))

    def exists(self, key: str) -> bool:
        return (self.folder(key) / "record.json").is_file()

    # ---- reading ----------------------------------------------------------------------------------
    def read(self, key: str, expected_id: str | None = None, build: str | None = None, verify: bool = True) -> StoredRun:
        """The verified record of ``key``.

        Raises:
            StoreError: the record is missing, unreadable, of another profile / build / id
                (``expected_id``: what the current plan computes), or a file it lists is missing or
                differs from its hash; the message names the file and the command that retrains it.
        """
        folder = self.folder(key)
        path = folder / "record.json"
        fix = f"retrain it: `{train_command(key, self.profile)}`"
        if not path.is_file():
            raise StoreError(f"{path}: no record of {key!r} in the store; {fix}")
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StoreError(f"{path}: unreadable record ({err.__class__.__name__}: {err}); restore it with `git checkout -- {path}` or {fix}") from None
        for field in ("format", "key", "id", "profile", "files"):
            if field not in rec:
                raise StoreError(f"{path}: truncated record (no {field!r}); restore it with `git checkout -- {path}` or {fix}")
        if rec["key"] != key or rec["profile"] != self.profile:
            raise StoreError(f"{path}: the record is {rec['key']!r} of profile {rec['profile']!r}, not {key!r} of {self.profile!r}; {fix}")
        if build is not None and rec.get("build") not in (None, build):
            raise StoreError(f"{path}: trained on data build {rec.get('build')}, not this profile's build {build}; {fix}")
        if expected_id is not None and rec["id"] != expected_id:
            raise StoreError(f"{path}: stale record (id {rec['id']}, the current code and plan give {expected_id}); {fix}")
        if verify:
            for name, digest in rec["files"].items():
                f = folder / name
                if not f.is_file():
                    raise StoreError(f"{f}: missing (listed in {path}); restore it with `git checkout -- {f}` or {fix}")
                if file_sha256(f) != digest:
                    raise StoreError(f"{f}: its SHA-256 differs from {path}'s (edited or truncated); restore it with `git checkout -- {f}` or {fix}")
        return StoredRun(key, folder, rec)

    def load_weights(self, run: StoredRun) -> dict[str, torch.Tensor]:
        """The stored weights as float32 (integer buffers unchanged)."""
        from safetensors.torch import load_file

        name = run.record.get("weights")
        if not name:
            raise StoreError(f"{run.folder / 'record.json'}: {run.key!r} stores no weights")
        return {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(run.folder / name)).items()}

    # ---- writing ----------------------------------------------------------------------------------
    def write(self, key: str, record: dict[str, Any], run_dir: Path | None, eval_dir: Path | None, tags: list[str],
              weights: dict[str, torch.Tensor] | None, keep_weights: bool = False, study_dir: Path | None = None) -> StoredRun:
        """Write the folder of ``key`` atomically file by file, ``record.json`` last: the run's files
        from ``run_dir`` (training) and ``eval_<tag>.*`` from ``eval_dir``; ``weights`` (fp16), or
        with ``keep_weights`` the folder's stored weights file as it is (a re-scoring)."""
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        old = folder / "record.json"
        if old.exists():  # an incomplete folder until the new record is written
            old.unlink()
        shutil.rmtree(folder / "study", ignore_errors=True)
        files: dict[str, str] = {}
        if keep_weights:
            files["weights.safetensors"] = file_sha256(folder / "weights.safetensors")
            record["weights"] = "weights.safetensors"
        elif weights is None:  # a run kept by its evaluations only: no stray weights beside its record
            (folder / "weights.safetensors").unlink(missing_ok=True)
        else:
            atomic_save_safetensors(folder / "weights.safetensors", weights, metadata={"key": key, "id": record["id"]})
            files["weights.safetensors"] = file_sha256(folder / "weights.safetensors")
            record["weights"] = "weights.safetensors"
        if run_dir is not None:
            for name in _RUN_FILES:
                if (run_dir / name).is_file():
                    shutil.copyfile(run_dir / name, folder / (name + ".tmp"))
                    (folder / (name + ".tmp")).replace(folder / name)
                    files[name] = file_sha256(folder / name)
        if study_dir is not None:  # a study's files, as it wrote them (under study/)
            for f in sorted(p for p in study_dir.rglob("*") if p.is_file()):
                rel = "study/" + str(f.relative_to(study_dir))
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, folder / (rel + ".tmp"))
                (folder / (rel + ".tmp")).replace(folder / rel)
                files[rel] = file_sha256(folder / rel)
        for tag in tags:
            assert eval_dir is not None
            for suffix in (".json", ".csv"):
                src = eval_dir / f"eval_{tag}{suffix}"
                shutil.copyfile(src, folder / f"eval_{tag}{suffix}.tmp")
                (folder / f"eval_{tag}{suffix}.tmp").replace(folder / f"eval_{tag}{suffix}")
                files[f"eval_{tag}{suffix}"] = file_sha256(folder / f"eval_{tag}{suffix}")
            src = eval_dir / f"eval_{tag}_samples.csv"
            dest = folder / f"eval_{tag}_samples.csv.gz"
            data = gzip.compress(src.read_bytes(), mtime=0)  # mtime 0: the same content gives the same bytes
            tmp = dest.with_suffix(".gz.tmp")
            tmp.write_bytes(data)
            tmp.replace(dest)
            files[dest.name] = file_sha256(dest)
        record = {**record, "format": RECORD_FORMAT, "key": key, "profile": self.profile, "files": dict(sorted(files.items()))}
        atomic_write_json(folder / "record.json", record)
        return StoredRun(key, folder, record)

    def drop_first_stage_copy(self, key: str, prefixes: tuple[str, ...], first_stage: "StoredRun") -> StoredRun:
        """Rewrite ``key``'s weights without the tensors under ``prefixes`` — a second stage's frozen
        copy of ``first_stage``'s weights, rebuilt from that record at checkout (DSOL stage 2's audio
        teacher) — and its record with the new hash and ``first_stage`` / ``first_stage_id``, each file
        atomically, the record last. Its id and evaluations are unchanged (the weights it is scored
        with are the same). Refused when ``key`` holds no such tensors."""
        from safetensors.torch import load_file

        run = self.read(key)
        name = run.record.get("weights")
        if not name:
            raise StoreError(f"{run.folder / 'record.json'}: {key!r} stores no weights")
        tensors = load_file(str(run.folder / name))
        kept = {k: v for k, v in tensors.items() if not k.startswith(prefixes)}
        if len(kept) == len(tensors):
            raise StoreError(f"{run.folder / name}: holds no tensors under {prefixes}; nothing to drop")
        atomic_save_safetensors(run.folder / name, kept, metadata={"key": key, "id": run.id})
        record = {**run.record, "first_stage": first_stage.key, "first_stage_id": first_stage.id}
        record["files"] = {**record["files"], name: file_sha256(run.folder / name)}
        atomic_write_json(run.folder / "record.json", record)
        return StoredRun(key, run.folder, record)

    def materialize_evals(self, run: StoredRun, dest: Path) -> None:
        """Copy ``run``'s evaluations into the run folder ``dest`` as ``eval_<tag>.json|.csv|_samples.csv``."""
        dest.mkdir(parents=True, exist_ok=True)
        for tag in run.eval_tags():
            for suffix in (".csv", ".json"):  # the JSON last: its presence means the evaluation is complete
                shutil.copyfile(run.path(f"eval_{tag}{suffix}"), dest / f"eval_{tag}{suffix}")
            atomic_write_text(dest / f"eval_{tag}_samples.csv", gzip.decompress(run.path(f"eval_{tag}_samples.csv.gz").read_bytes()).decode())

    def remove(self, key: str) -> None:
        shutil.rmtree(self.folder(key), ignore_errors=True)


def size_report(store: RunStore) -> dict[str, int]:
    """Bytes in the store: ``weights``, ``records`` (everything else), ``runs`` (records)."""
    w = r = 0
    n = 0
    for p in store.base.rglob("*") if store.base.is_dir() else []:
        if p.is_file():
            if p.suffix == ".safetensors":
                w += p.stat().st_size
            else:
                r += p.stat().st_size
            n += p.name == "record.json"
    return {"weights": w, "records": r, "runs": n}
