"""Fixtures shared by the test modules.

* ``one_thread`` — one intra-op torch thread for a module (tiny tensors: more threads only cost
  time on a shared machine, and runs stay comparable); modules opt in with
  ``pytestmark = pytest.mark.usefixtures("one_thread")``.
* ``fake_build`` — one small benchmark build per session (``test_data_build.build_fake``: fake
  assets, every split and task), with the cached features of :func:`helpers.tiny_experiment`.
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
