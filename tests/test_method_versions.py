"""A method's behaviour cannot change without a bump of its training-code version.

Every stored run's id contains its method's :attr:`avgn.methods.base.Method.version`
(:mod:`avgn.store.plan`), so that a change to what a method trains marks its stored runs stale. This
test trains every learned method for one epoch of the seconds-sized tiny experiment on the shared fake
build and compares the losses and validation scores with ``tests/data/method_histories.json``: a
difference at the same version fails, naming the bump. After bumping, refresh the file with
``python tests/test_method_versions.py`` (and retrain the stale runs: ``avgn runs status``).

Values are compared to a relative 2e-3 (not bit for bit): the CPU kinds of the test machines
(AVX2, AVX-512, with and without BF16) round differently; a behaviour change moves them by far more.
The training losses are continuous in the weights and agree across kinds to ~1e-4; the validation
score is a ranking metric on a handful of items, where another kind's rounding can flip a rank
(measured: 0.2555 on AVX-512, 0.2542 on AVX2 for AVGN), so it is compared only on the vector
instruction set the committed histories were written on (``isa``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from avgn.methods import get_method, list_methods

pytestmark = pytest.mark.usefixtures("one_thread")

DIGESTS = Path(__file__).resolve().parent / "data" / "method_histories.json"


def vector_isa() -> str:
    """The widest vector instruction set of this CPU (``avx512`` / ``avx2`` / ``other``): what decides
    how its float kernels round."""
    from avgn.env import cpu_flags

    f = cpu_flags()
    return "avx512" if f["avx512f"] else "avx2" if f["avx2"] else "other"


def compared(history: dict[str, float], isa: str | None) -> dict[str, float]:
    """The entries of ``history`` compared on this machine: every training loss, and the validation
    score where the committed histories' instruction set ``isa`` is this machine's."""
    return {k: v for k, v in history.items() if k.startswith("train/") or isa == vector_isa()}
#: each method's tiny experiment (DSOL's second stage needs a first one: its first stage stands for it)
EXTRA = {"dsol": {"model.stage": 1, "train.concat_items": 0, "train.scene_items": 0}}


def _history(method: str, build: Path, out: Path) -> dict[str, float]:
    from helpers import tiny_experiment

    from avgn.runs import flatten
    from avgn.train import train

    train(tiny_experiment(method, **{"train.epochs": 1, **EXTRA.get(method, {})}), build, out / method, seed=0, device="cpu", progress=False)
    row = json.loads((out / method / "history.json").read_text())[0]
    flat = flatten({"train": row.get("train", {}), "val_score": row.get("val_score")})
    return {k: float(v) for k, v in sorted(flat.items()) if isinstance(v, (int, float)) and math.isfinite(float(v))}


@pytest.mark.parametrize("method", list_methods(learned=True))
def test_method_history_matches_its_version(method, fake_build, tmp_path):
    committed = json.loads(DIGESTS.read_text())
    assert method in committed, f"{method} has no committed history: run `python tests/test_method_versions.py`"
    version = get_method(method).version
    entry = committed[method]
    if entry["version"] != version:
        pytest.fail(f"{method}: version {version} but {DIGESTS.name} holds version {entry['version']}: "
                    "refresh it with `python tests/test_method_versions.py`")
    got = _history(method, fake_build, tmp_path)
    assert set(got) == set(entry["history"]), f"{method}: the history's entries changed; bump {type(get_method(method)).__name__}.version"
    assert any(k.startswith("train/") for k in got), f"{method}: no training loss to compare"
    for k, v in compared(entry["history"], committed.get("isa")).items():
        assert got[k] == pytest.approx(v, rel=2e-3, abs=1e-6), (
            f"{method}: {k} = {got[k]:.6g}, committed {v:.6g} at version {version}: the method's training changed; bump "
            f"{type(get_method(method)).__name__}.version (its stored runs become stale) and refresh {DIGESTS.name}")


if __name__ == "__main__":  # refresh the committed histories
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_data_build import build_fake

    from helpers import tiny_experiment

    from avgn.features import compute_features

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "build"
        build_fake(build)
        compute_features(build, tiny_experiment().inputs.features, device="cpu", progress=False)
        out = {m: {"version": get_method(m).version, "history": _history(m, build, Path(tmp) / "runs")} for m in list_methods(learned=True)}
    out["isa"] = vector_isa()  # type: ignore[assignment]
    DIGESTS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS}")
