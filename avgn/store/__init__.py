"""The book's runs: the plan (:mod:`avgn.store.plan`), the committed store (:mod:`avgn.store.records`)
and the queue that fills it and hands its runs to the chapters (:mod:`avgn.store.queue`)."""

from avgn.store.plan import PlannedRun, PlanKeyError, book_plan, build_identity, run_id
from avgn.store.queue import checkout, plan_status, store_run, train_queue
from avgn.store.records import RunStore, StoreError

__all__ = ["PlannedRun", "PlanKeyError", "book_plan", "build_identity", "run_id", "RunStore", "StoreError", "plan_status", "store_run",
           "train_queue", "checkout"]
