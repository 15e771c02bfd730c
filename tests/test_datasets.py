"""PyTorch datasets over a (fake-asset) build: sample structure, on-the-fly mixing, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avgn.data.datasets import (
    DataFileError,
    OnTheFlyMixtureDataset,
    SceneDataset,
    SpecConfig,
    collate_scenes,
    log_spectrogram,
)
from test_data_build import FAKE_CLASSES, build_fake


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds_build")
    build_fake(out)
    return out


def test_spec_shape_matches_config():
    cfg = SpecConfig()
    assert (cfg.win_length, cfg.hop_length, cfg.fft_size) == (800, 400, 800)
    assert cfg.shape == (1, 401, 121)
    x = torch.randn(48000)
    s = log_spectrogram(x, cfg)
    assert s.shape == cfg.shape[1:]
    assert log_spectrogram(torch.randn(3, 40000), cfg).shape == (3, 401, 121)  # padded to 3 s
    # a pure tone peaks in the right bin
    t = torch.arange(48000) / 16000
    s = log_spectrogram(torch.sin(2 * torch.pi * 1000 * t), cfg)
    assert int(s[:, 60].argmax()) == round(1000 / (16000 / 800))


def test_scene_dataset_samples(built):
    ds = SceneDataset(built, "test", layouts=["scene"])
    n_cls = len(FAKE_CLASSES)
    seen_tasks = set()
    for i in range(len(ds)):
        s = ds[i]
        S = int(s["n_sources"])
        seen_tasks.add(s["meta"]["task"])
        assert s["image"].shape == (3, 224, 224) and s["image"].dtype == torch.float32
        assert 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
        assert s["spec"].shape == SpecConfig().shape
        assert s["labels"].shape == (n_cls,) and int(s["labels"].sum()) == S
        assert s["classes"].shape == (4,) and (s["classes"][S:] == -1).all()
        assert set(s["classes"][:S].tolist()) == set(torch.nonzero(s["labels"]).flatten().tolist())
        assert s["masks"].shape == (4, 224, 224) and s["masks"][:S].flatten(1).any(1).all()
        assert not s["masks"][S:].any()
    assert seen_tasks == {"solo", "duet", "trio", "quartet"}
    concat = SceneDataset(built, "test", layouts=["concat"])
    assert concat[0]["image"].shape == (3, 224, 448) and concat[0]["masks"].shape == (4, 224, 448)


def test_collate_and_loader(built):
    ds = SceneDataset(built, "val", layouts=["scene"])
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_scenes)))
    assert batch["image"].shape == (3, 3, 224, 224)
    assert batch["masks"].shape == (3, 4, 224, 224) and batch["classes"].shape == (3, 4)
    assert isinstance(batch["meta"], list) and len(batch["meta"]) == 3
    mixed = SceneDataset(built, "val", tasks=["duet"])
    s_concat = next(mixed[i] for i in range(len(mixed)) if mixed[i]["meta"]["layout"] == "concat")
    s_scene = next(mixed[i] for i in range(len(mixed)) if mixed[i]["meta"]["layout"] == "scene")
    with pytest.raises(ValueError, match="separate"):
        collate_scenes([s_concat, s_scene])


def test_on_the_fly_concat_mixing(built):
    """Two different classes, multi-hot labels, masks in their halves, audio = gain-weighted clip sum."""
    from avgn.data.audio import read_audio

    ds = OnTheFlyMixtureDataset(built, layout="concat", seed=1, return_sources=True, noise_prob=0.0, length=24)
    for i in range(len(ds)):
        s = ds[i]
        assert int(s["n_sources"]) == 2
        c = s["classes"][:2].tolist()
        assert c[0] != c[1] and min(c) >= 0
        assert torch.equal(torch.nonzero(s["labels"]).flatten().sort().values, torch.tensor(sorted(c)))
        assert s["image"].shape == (3, 224, 448)
        for k in range(2):  # source k is in half k, and its box too
            m = s["masks"][k]
            assert m[:, k * 224 : (k + 1) * 224].sum() == m.sum() > 0
            ys, xs = torch.nonzero(m, as_tuple=True)
            np.testing.assert_allclose(
                s["boxes"][k].tolist(),
                [xs.min() / 448, ys.min() / 224, (xs.max() + 1) / 448, (ys.max() + 1) / 224], atol=1e-6)
        clips = np.stack([read_audio(built / p, 16000) for p in s["meta"]["clip_paths"]])
        g = 10 ** (s["gains_db"][:2].numpy().astype(np.float64) / 20)
        expect = (g[:, None] * clips).sum(0)
        expect *= min(1.0, 0.99 / np.abs(expect).max())
        np.testing.assert_allclose(s["audio"].numpy(), expect, atol=1e-5)
        np.testing.assert_allclose(s["sources"][:2].sum(0).numpy(), s["audio"].numpy(), atol=1e-5)
        lo, hi = ds.gain_db_range
        assert ((s["gains_db"][:2] >= lo) & (s["gains_db"][:2] <= hi)).all()


def test_on_the_fly_is_reproducible_and_epoch_dependent(built):
    ds = OnTheFlyMixtureDataset(built, layout="concat", seed=7, length=8)
    a = [ds[i]["meta"]["scene_ids"] for i in range(8)]
    b = [OnTheFlyMixtureDataset(built, layout="concat", seed=7, length=8)[i]["meta"]["scene_ids"] for i in range(8)]
    assert a == b
    ds.set_epoch(1)
    assert [ds[i]["meta"]["scene_ids"] for i in range(8)] != a


def test_partner_draw_is_uniform_over_other_classes(built):
    ds = OnTheFlyMixtureDataset(built, layout="concat")
    rng = np.random.default_rng(0)
    cls = int(ds.pool_classes[0])
    draws = [ds.partner_class(rng, cls) for _ in range(3000)]
    assert cls not in draws
    assert set(draws) == set(ds.pool_classes.tolist()) - {cls}
    counts = np.bincount(draws)[list(set(draws))]
    assert counts.min() > 0.6 * counts.mean()


def test_on_the_fly_scene_layout(built):
    ds = OnTheFlyMixtureDataset(built, layout="scene", seed=0)
    s = ds[0]
    assert s["image"].shape == (3, 224, 224) and int(s["n_sources"]) == 2
    assert s["meta"]["scene_ids"][0].startswith("train-duet-scene")


def test_corrupt_flac_raises_with_path(built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    ds = SceneDataset(out, "test", tasks=["duet"], layouts=["scene"])
    bad = out / ds.rows.iloc[0]["mixture_path"]
    bad.write_bytes(b"fLaC" + b"\x00garbage" * 50)
    with pytest.raises(DataFileError) as e:
        ds[0]
    assert str(bad) in str(e.value) and e.value.path == str(bad)
    # a training clip (train scenes are mixed from their clips)
    train = SceneDataset(out, "train", tasks=["solo"])
    rel = train.rows.iloc[0]["clip_paths"][0]
    (out / rel).write_bytes(b"not audio")
    with pytest.raises(DataFileError, match="audio") as e:
        train[0]
    assert e.value.path == str(out / rel)
    # a missing image
    (out / ds.rows.iloc[1]["image_path"]).unlink()
    with pytest.raises(DataFileError, match="image"):
        ds[1]


def test_fuzzed_benchmark_files_name_the_file(built, tmp_path):
    """A truncated PNG or FLAC, a clip at another sample rate, a zero-length clip, a mask of the wrong
    size: each is a DataFileError naming the file, never silently replaced or resampled."""
    import soundfile as sf
    from PIL import Image

    out = tmp_path / "copy"
    shutil.copytree(built, out)
    ds = SceneDataset(out, "test", tasks=["duet"], layouts=["scene"])
    row = ds.rows.iloc[0]
    img = out / row["image_path"]
    img.write_bytes(img.read_bytes()[: len(img.read_bytes()) // 3])  # truncated PNG
    with pytest.raises(DataFileError, match="image") as e:
        ds[0]
    assert e.value.path == str(img)
    row = ds.rows.iloc[1]
    mask = out / row["mask_paths"][0]
    Image.new("L", (100, 60), 255).save(mask)  # a mask of another size than its frame
    with pytest.raises(DataFileError, match=r"mask .*it is 60x100 pixels, its frame 224x224") as e:
        ds[1]
    assert e.value.path == str(mask)
    train = SceneDataset(out, "train", tasks=["solo"])
    clips = [out / train.rows.iloc[i]["clip_paths"][0] for i in range(3)]
    x, sr = sf.read(str(clips[0]), dtype="float32")
    sf.write(str(clips[0]), np.concatenate([x, x, x])[: int(3 * 22050)], 22050, format="FLAC")  # 3 s, another rate
    with pytest.raises(DataFileError, match=r"sample rate is 22050 Hz, the build's 16000 Hz") as e:
        train[0]
    assert e.value.path == str(clips[0])
    sf.write(str(clips[1]), np.zeros(0, dtype=np.float32), sr, format="FLAC")  # zero-length
    with pytest.raises(DataFileError, match="audio") as e:
        train[1]
    assert e.value.path == str(clips[1])
    data = clips[2].read_bytes()
    clips[2].write_bytes(data[: len(data) // 2])  # truncated FLAC
    with pytest.raises(DataFileError, match="audio") as e:
        train[2]
    assert e.value.path == str(clips[2])
