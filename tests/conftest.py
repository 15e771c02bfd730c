"""Fixtures shared by the test modules.

* ``one_thread`` — one intra-op torch thread for a module (tiny tensors: more threads only cost
  time on a shared machine, and runs stay comparable); modules opt in with
  ``pytestmark = pytest.mark.usefixtures("one_thread")``.
* ``fake_build`` — one small benchmark build per session (``test_data_build.build_fake``: fake
  assets, every split and task), with the cached features of :func:`helpers.tiny_experiment`.
* ``tiny_store`` — a run store holding :func:`helpers.tiny_plan` (trained, evaluated and stored
  once per session on ``fake_build``): ``{"root", "store", "plan", "data"}``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def fake_build(tmp_path_factory) -> Path:
    from helpers import tiny_experiment
    from test_data_build import build_fake

    from avgn.features import compute_features

    out = tmp_path_factory.getbasetemp() / "avgn_fake_build_shared"
    build_fake(out)
    compute_features(out, tiny_experiment().inputs.features, device="cpu", progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, fake_build):
    from helpers import tiny_experiment, tiny_plan

    import avgn.store.plan as plan_mod
    from avgn.store.queue import store_run
    from avgn.store.records import RunStore

    mp = pytest.MonkeyPatch()
    mp.setattr(plan_mod, "get_experiment", lambda m, p="smoke", **o: tiny_experiment(m, **{"train.epochs": 1, **o}))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_store")
    plan = tiny_plan()
    store = RunStore("smoke", root / "store")
    for key in plan:
        store_run(key, "smoke", store=store, data_dir=fake_build, work_dir=root / "work", device="cpu", plan=plan)
    torch.set_num_threads(n)
    mp.undo()  # tests that compute the tiny plan's ids patch it again (``tiny_ids``)
    return {"root": root, "store": store, "plan": plan, "data": fake_build}


@pytest.fixture()
def tiny_ids(monkeypatch):
    """:func:`helpers.tiny_experiment` stands for every planned experiment (the ids of ``tiny_store``)."""
    from helpers import tiny_experiment

    import avgn.store.plan as plan_mod

    monkeypatch.setattr(plan_mod, "get_experiment", lambda m, p="smoke", **o: tiny_experiment(m, **{"train.epochs": 1, **o}))
