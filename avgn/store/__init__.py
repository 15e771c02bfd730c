"""Runs kept for good: what identifies a planned run (:mod:`avgn.store.plan`; the plans themselves
are registered by name, the book's in :mod:`avgnbook.plan`), the committed store
(:mod:`avgn.store.records`) and the queue that fills it and hands its runs to readers
(:mod:`avgn.store.queue`)."""

from avgn.store.plan import PlannedRun, PlanKeyError, build_identity, get_plan, run_id
from avgn.store.queue import checkout, plan_status, store_run, train_queue
from avgn.store.records import RunStore, StoreError

__all__ = ["PlannedRun", "PlanKeyError", "get_plan", "build_identity", "run_id", "RunStore", "StoreError", "plan_status", "store_run",
           "train_queue", "checkout"]
