"""Data-parallel training under ``torchrun`` (one process per device; ``gloo`` on CPU, ``nccl`` on CUDA).

:func:`from_env` reads the variables ``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and
joins the process group; without them (a plain ``avgn train``) it returns the single-process
:class:`DistInfo` and nothing else in the engine changes. How :mod:`avgn.train` uses it:

* **Data**: every rank draws the same seeded epoch plan (the batch sampler is a pure function of
  ``(seed, epoch)``) and trains on its share of each *global* batch, ``indices[rank::world]``
  (:func:`shard`), so ``batch_size`` is the global batch whatever the number of processes.
* **Gradients**: :class:`torch.nn.parallel.DistributedDataParallel` averages them over the ranks
  (the model and the method's loss run inside one wrapped module, so every parameter the loss uses
  is synchronised). For a loss that is a mean of per-sample terms this is the gradient of the
  global batch; the contrastive terms (negatives from the same batch) and batch normalisation see
  only the rank's share of it, as in the public EZ-VSL / AVGN code, which is why a run on N
  processes is close to, not identical with, the one-process run of the same global batch.
* **Metrics** are summed over the ranks (:func:`all_reduce_sums`); validation, checkpoints and the
  run's files are the job of rank 0 alone, and its decisions (the training state, when to
  checkpoint) are broadcast (:func:`broadcast_object`) so that every rank takes the same path.
* **Resume**: every rank loads the ``last`` checkpoint rank 0 wrote; each rank's RNG states are
  gathered into it (:func:`gather_objects`) and each rank restores its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "from_env", "shard", "all_reduce_sums", "broadcast_object", "gather_objects", "barrier", "shutdown"]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its machine);
    ``backend`` is ``None`` for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(device: torch.device) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (once per process), or return
    the single-process :class:`DistInfo` when there is none (``WORLD_SIZE`` unset or 1).

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 without ``RANK`` / ``MASTER_ADDR`` (not started by torchrun),
            or CUDA ranks with fewer visible devices than ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: start data-parallel training with "
                           "`torchrun --nproc_per_node=N -m avgn train ...`")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, backend)


def shard(indices: Sequence[int], info: DistInfo) -> list[int]:
    """This rank's share of a global batch: ``indices[rank::world_size]`` (all of it for one process)."""
    return list(indices[info.rank :: info.world_size])


def all_reduce_sums(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """``values`` summed over the ranks (float64; the keys must be the same on every rank)."""
    if not info.enabled:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if info.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.cpu().tolist())}


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group (the end of a data-parallel run)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
