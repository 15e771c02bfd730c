"""The frozen backbone's feature cache: computed once per image, on demand for a few frames, never twice
by two processes at once, and the ``avgn data features`` command's default splits."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_experiment

from avgn.data.manifest import load_manifest
from avgn.features import FeatureStore, _cache_lock, compute_features, feature_dir, feature_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def bare_build(fake_build, tmp_path) -> Path:
    """The shared fake build without its feature cache (symlinks to its files)."""
    out = tmp_path / "build"
    out.mkdir()
    for p in fake_build.iterdir():
        if p.name != "features":
            (out / p.name).symlink_to(p)
    return out


def _spec():
    return tiny_experiment().inputs.features


def test_compute_missing_computes_the_asked_frames_only_and_matches_the_batched_cache(fake_build, bare_build):
    spec = _spec()
    df = load_manifest(bare_build)
    scene, concat = df[df.layout == "scene"].iloc[0], df[df.layout == "concat"].iloc[0]
    store = FeatureStore(bare_build, spec, preload=False, compute_missing=True, device="cpu")
    for row in (scene, concat):
        got = store.get(row.image_path)
        ref = FeatureStore(fake_build, spec, preload=False).get(row.image_path)  # computed in batches of 32 frames
        assert got.dtype == torch.float16 and got.shape == ref.shape
        torch.testing.assert_close(got.float(), ref.float(), atol=2e-3, rtol=2e-3)
        assert feature_path(bare_build, spec, row.image_path).is_file()  # cached for the next reader
    assert ref.shape[-1] == 2 * got.shape[-2]  # the concat frame: two frames' features side by side
    written = sorted(p for p in feature_dir(bare_build, spec).rglob("*.safetensors"))
    assert len(written) == 2  # nothing else of the build was computed
    assert store.channels == FeatureStore(fake_build, spec, preload=False).channels


def test_a_store_without_compute_missing_refuses_a_missing_frame(bare_build):
    spec = _spec()
    with pytest.raises(FileNotFoundError, match="compute it first"):
        FeatureStore(bare_build, spec, preload=False)
    compute_features(bare_build, spec, splits=["val"], device="cpu", progress=False)
    train_image = load_manifest(bare_build).query("split == 'train'").image_path.iloc[0]
    with pytest.raises(FileNotFoundError, match="rerun compute_features"):
        FeatureStore(bare_build, spec, preload=False).get(train_image)
    with pytest.raises(ValueError, match="preload=False"):
        FeatureStore(bare_build, spec, preload=True, compute_missing=True)


def test_a_second_caller_waits_for_the_first_and_computes_nothing_twice(fake_build, bare_build):
    """While one process holds the cache (here: this test, holding its lock), another caller waits; it
    then re-checks what is cached and computes only what is still missing (here: nothing)."""
    spec = _spec()
    out: dict = {}
    with _cache_lock(feature_dir(bare_build, spec)):
        t = threading.Thread(target=lambda: out.update(compute_features(bare_build, spec, splits=["val"], device="cpu", progress=False)))
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and not out  # waiting on the lock
        # "the other process" fills the cache meanwhile
        shutil.copytree(feature_dir(fake_build, spec), feature_dir(bare_build, spec), dirs_exist_ok=True)
    t.join(timeout=60)
    n_val = load_manifest(bare_build).query("split == 'val'").image_path.nunique()
    assert out["n_images"] == n_val and out["n_computed"] == 0 and out["n_cached"] == n_val


def test_data_features_command_computes_every_split_but_train_by_default(bare_build, monkeypatch, capsys):
    import avgn.cli as cli
    import avgn.experiment as experiment

    monkeypatch.setattr(experiment, "get_experiment", lambda method, profile, **kw: tiny_experiment(method))
    assert cli.main(["data", "features", "--profile", "smoke", "--data", str(bare_build), "--quiet", "--device", "cpu"]) == 0
    df = load_manifest(bare_build)
    cached = {p for p in df.image_path if feature_path(bare_build, _spec(), p).is_file()}
    assert cached == set(df[df.split != "train"].image_path) and cached
    assert "computed" in capsys.readouterr().out
    cli.main(["data", "features", "--profile", "smoke", "--data", str(bare_build), "--quiet", "--device", "cpu", "--all"])
    assert all(feature_path(bare_build, _spec(), p).is_file() for p in df.image_path)


def test_data_features_names_a_missing_build(tmp_path):
    import avgn.cli as cli

    with pytest.raises(SystemExit, match="avgn data build --profile smoke"):
        cli.main(["data", "features", "--profile", "smoke", "--data", str(tmp_path / "nothing")])
