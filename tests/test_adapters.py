"""Real-dataset adapters on tiny fixture files written by the tests (a few rows, small frames, short WAVs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from avgn.boxes import boxes_to_masks
from avgn.data import adapters as A
from avgn.data.datasets import DataFileError, SpecConfig, collate_scenes

SR = 16000


pytestmark = pytest.mark.usefixtures("one_thread")


def _frame(path: Path, color=(10, 200, 30), size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _wav(path: Path, freq: float, seconds: float = 1.0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    x = (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(path, x, SR, subtype="FLOAT")
    return x


@pytest.fixture()
def music(tmp_path) -> Path:
    root = tmp_path / "music"
    meta = root / "metadata"
    meta.mkdir(parents=True)
    # box B1 has w < x: read as corners it would be empty (the public loader's bug)
    solo = [
        {"file": "vidA_000_00000", "class": "cello", "bbox": [0.5, 0.25, 0.25, 0.5]},
        {"file": "vidB_001_00037", "class": "flute", "bbox": [0.1, 0.1, 0.3, 0.2]},
    ]
    (meta / "music_solo.json").write_text(json.dumps(solo))
    (meta / "music_solo_test.csv").write_text("vidA_000_00000,cello\nvidB_001_00037,flute\n")
    (meta / "music_solo_train.txt").write_text("vidA_000_00007,cello\n")
    duet = [{"file": "vidC_000_00000", "class_src1": "cello", "bbox_src1": [0.6, 0.1, 0.3, 0.8],
             "class_src2": "acoustic_guitar", "bbox_src2": [0.0, 0.5, 0.4, 0.4]}]
    (meta / "music_duet.json").write_text(json.dumps(duet))
    (meta / "music_duet_test.csv").write_text("vidC_000_00000\n")
    for f in ("vidA_000_00000", "vidA_000_00007", "vidB_001_00037", "vidC_000_00000"):
        _frame(root / "frames" / f"{f}.jpg")
    _wav(root / "audio" / "vidA.wav", 440, seconds=5.0)
    _wav(root / "audio" / "vidB.wav", 660, seconds=1.0)  # shorter than 3 s: tiled
    _wav(root / "audio" / "vidC.wav", 330, seconds=4.0)
    return root


def test_music_frame_to_video():
    assert A.music_video_id("HnUOaSfTA6c_000_00007") == "HnUOaSfTA6c"
    assert A.music_video_id("-_-TDDxoaAc_012_00367") == "-_-TDDxoaAc"
    with pytest.raises(ValueError):
        A.music_video_id("not_a_frame")


def test_music_solo_boxes_are_xywh(music):
    """[x, y, w, h] -> mask x in [0.5, 0.75), y in [0.25, 0.75); as corners it would be empty."""
    ds = A.music_solo(music, music / "metadata" / "music_solo.json", music / "metadata" / "music_solo_test.csv")
    assert len(ds) == 2 and ds.class_names == ("cello", "flute")
    s = ds[0]
    m = s["masks"][0]
    assert m.shape == (224, 224)
    ys, xs = torch.nonzero(m, as_tuple=True)
    assert (int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1) == (112, 168, 56, 168)
    assert int(m.sum()) == 56 * 112
    np.testing.assert_allclose(s["boxes"][0].tolist(), [0.5, 0.25, 0.75, 0.75], atol=1e-6)
    # the public loader's reading (corners) gives an empty mask for this very box
    as_corners = boxes_to_masks(torch.tensor([[0.5, 0.25, 0.5, 0.75]]), (224, 224))  # x2 clipped up to x1
    assert not as_corners.any()
    with pytest.raises(ValueError):
        boxes_to_masks(torch.tensor([[0.5, 0.25, 0.25, 0.5]]), (224, 224))
    assert s["image"].shape == (3, 224, 224) and s["spec"].shape == SpecConfig().shape
    assert s["labels"].tolist() == [1.0, 0.0] and int(s["n_sources"]) == 1
    assert s["meta"]["has_gt"] == [True]
    # the audio is the middle 3 s of the video's audio; a short file is tiled to 3 s
    assert s["audio"].shape == (48000,)
    assert ds[1]["audio"].shape == (48000,) and float(ds[1]["audio"].abs().max()) > 0.05


def test_music_solo_training_list_has_no_boxes(music):
    ds = A.music_solo(music, split_list=music / "metadata" / "music_solo_train.txt", class_names=("cello", "flute"))
    s = ds[0]
    assert not s["masks"].any() and s["meta"]["has_gt"] == [False] and s["labels"].tolist() == [1.0, 0.0]


def test_music_duet(music):
    ds = A.music_duet(music, music / "metadata" / "music_duet.json", music / "metadata" / "music_duet_test.csv",
                      class_names=("acoustic_guitar", "cello"))
    s = ds[0]
    assert int(s["n_sources"]) == 2 and s["labels"].tolist() == [1.0, 1.0]
    assert s["classes"][:2].tolist() == [1, 0] and s["classes"][2:].tolist() == [-1, -1]
    np.testing.assert_allclose(s["boxes"][0].tolist(), [0.6, 0.1, 0.9, 0.9], atol=1e-6)
    np.testing.assert_allclose(s["boxes"][1].tolist(), [0.0, 0.5, 0.4, 0.9], atol=1e-6)
    assert s["masks"][:2].flatten(1).any(1).all()


@pytest.fixture()
def vgg(tmp_path) -> Path:
    root = tmp_path / "vgg"
    meta = root / "metadata"
    meta.mkdir(parents=True)
    (meta / "vgginstruments_test.csv").write_text("sample0000,accordion\nsample0001,banjo\n")
    (meta / "vgginstruments_multi_test.csv").write_text("sample0000,accordion,sample0001,banjo\n")
    masks = root / "masks"
    masks.mkdir()
    m0 = np.zeros((360, 640), np.uint8)
    m0[:180, :320] = 1  # top-left quarter
    np.save(masks / "sample0000.npy", m0)
    m1 = np.zeros((100, 100), np.uint8)
    m1[50:, 50:] = 255  # bottom-right quarter
    Image.fromarray(m1).save(masks / "sample0001.png")
    _frame(root / "frames" / "sample0000.jpg", (200, 0, 0))
    _frame(root / "frames" / "sample0001.jpg", (0, 0, 200))
    _wav(root / "audio" / "sample0000.wav", 440, 3.0)
    _wav(root / "audio" / "sample0001.wav", 880, 3.0)
    vggss = [
        {"file": "sample0000", "class": "accordion", "bbox": [[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0]]},
        {"file": "sample0001", "class": "banjo", "bbox": [[0.25, 0.25, 0.75, 0.75]]},
    ]
    (meta / "vggss.json").write_text(json.dumps(vggss))
    (meta / "vggss_test.csv").write_text("sample0000\nsample0001\n")
    (meta / "vggsound_duet_test.csv").write_text("sample0000,accordion,sample0001,banjo\n")
    return root


def test_vgginstruments_masks(vgg):
    ds = A.vgginstruments(vgg, vgg / "metadata" / "vgginstruments_test.csv", mask_dir=vgg / "masks")
    s0, s1 = ds[0], ds[1]
    assert int(s0["masks"][0].sum()) == 112 * 112 and bool(s0["masks"][0][:112, :112].all())
    assert bool(s1["masks"][0][112:, 112:].all()) and int(s1["masks"][0].sum()) == 112 * 112
    assert s0["labels"].tolist() == [1.0, 0.0] and s1["labels"].tolist() == [0.0, 1.0]


def test_pickled_masks_need_opt_in(vgg):
    import pickle

    (vgg / "masks" / "sample0000.npy").unlink()
    with (vgg / "masks" / "sample0000.pkl").open("wb") as fh:
        pickle.dump(np.ones((10, 10), np.uint8), fh)
    ds = A.vgginstruments(vgg, vgg / "metadata" / "vgginstruments_test.csv", mask_dir=vgg / "masks")
    with pytest.raises(DataFileError, match="allow_pickle"):
        ds[0]
    ok = A.vgginstruments(vgg, vgg / "metadata" / "vgginstruments_test.csv", mask_dir=vgg / "masks",
                          allow_pickle=True)
    assert bool(ok[0]["masks"][0].all())


def test_vgginstruments_multi_pairs(vgg):
    from avgn.data.audio import read_audio

    ds = A.vgginstruments_multi(vgg, vgg / "metadata" / "vgginstruments_multi_test.csv", mask_dir=vgg / "masks")
    s = ds[0]
    assert s["image"].shape == (3, 224, 448) and s["masks"].shape == (4, 224, 448)
    assert s["meta"]["layout"] == "concat" and int(s["n_sources"]) == 2
    # source 0 in the left frame (top-left quarter), source 1 in the right frame (bottom-right quarter)
    assert bool(s["masks"][0][:112, :112].all()) and int(s["masks"][0].sum()) == 112 * 112
    assert bool(s["masks"][1][112:, 336:].all()) and int(s["masks"][1].sum()) == 112 * 112
    np.testing.assert_allclose(s["boxes"][1].tolist(), [0.75, 0.5, 1.0, 1.0], atol=1e-6)
    # left frame red, right frame blue
    assert s["image"][0, :, :224].mean() > 0.5 and s["image"][2, :, 224:].mean() > 0.5
    expect = read_audio(vgg / "audio" / "sample0000.wav") + read_audio(vgg / "audio" / "sample0001.wav")
    np.testing.assert_allclose(s["audio"].numpy(), expect, atol=1e-6)
    batch = collate_scenes([s, s])
    assert batch["image"].shape == (2, 3, 224, 448)


def test_vggss_corner_boxes_are_united(vgg):
    ds = A.vggss(vgg, vgg / "metadata" / "vggss.json", vgg / "metadata" / "vggss_test.csv")
    m = ds[0]["masks"][0]
    assert int(m.sum()) == 56 * 56 + 112 * 112
    assert bool(m[:56, :56].all()) and bool(m[112:, 112:].all()) and not m[60:100, 60:100].any()
    np.testing.assert_allclose(ds[1]["boxes"][0].tolist(), [0.25, 0.25, 0.75, 0.75], atol=1e-6)
    # corners, not [x, y, w, h]: a corner box with x2 < x1 is rejected
    bad = vgg / "metadata" / "bad.json"
    bad.write_text(json.dumps([{"file": "sample0000", "class": "accordion", "bbox": [[0.5, 0.5, 0.2, 0.2]]}]))
    with pytest.raises(ValueError, match="corners"):
        A.vggss(vgg, bad, on_bad_box="error")


def test_vggss_malformed_boxes_are_dropped_and_reported(vgg):
    """The official vggss.json has 12 corrupt boxes (e.g. a y2 of -2.88e16): by default they are
    dropped, every one named, and a sample left without any box is dropped and named too."""
    rows = [
        {"file": "sample0000", "class": "accordion", "bbox": [[0.0, 0.0, 0.25, 0.25], [0.384375, 0.859375, 0.696875, -2.88e16]]},
        {"file": "sample0001", "class": "banjo", "bbox": [[0.25, 0.25, float("nan"), 0.75]]},
    ]
    path = vgg / "metadata" / "corrupt.json"
    path.write_text(json.dumps(rows))  # NaN is written as the JSON extension NaN, as Python reads it
    with pytest.warns(UserWarning, match=r"dropped 2 malformed box\(es\): sample0000 box 1 .*outside the frame.*sample0001 box 0 "
                                         r".*non-finite.*1 sample\(s\) left without a box dropped: sample0001"):
        ds = A.vggss(vgg, path, vgg / "metadata" / "vggss_test.csv")
    assert len(ds) == 1 and ds[0]["meta"]["scene_id"] == "sample0000"
    assert int(ds[0]["masks"][0].sum()) == 56 * 56  # the good box of the sample is kept
    rep = ds.box_report
    assert [(f, i) for f, i, _, _ in rep.boxes] == [("sample0000", 1), ("sample0001", 0)] and rep.samples == ("sample0001",)
    with pytest.raises(ValueError, match=r"corrupt.json \[sample0000\] box 1 .* is malformed: .*on_bad_box='drop'"):
        A.vggss(vgg, path, on_bad_box="error")
    with pytest.raises(ValueError, match="on_bad_box must be one of"):
        A.vggss(vgg, path, on_bad_box="ignore")
    with pytest.warns(UserWarning, match="left without a box dropped: sample0001"):
        duet = A.vggsound_duet(vgg, path, vgg / "metadata" / "vggsound_duet_test.csv")
    assert len(duet) == 0  # its partner frame has no box left


def test_vggss_clean_file_reports_nothing(vgg):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = A.vggss(vgg, vgg / "metadata" / "vggss.json", vgg / "metadata" / "vggss_test.csv")
    assert len(ds) == 2 and ds.box_report.boxes == () and "no malformed box" in str(ds.box_report)


def test_vggsound_duet(vgg):
    ds = A.vggsound_duet(vgg, vgg / "metadata" / "vggss.json", vgg / "metadata" / "vggsound_duet_test.csv")
    s = ds[0]
    assert s["image"].shape == (3, 224, 448) and s["classes"][:2].tolist() == [0, 1]
    np.testing.assert_allclose(s["boxes"][1].tolist(), [0.5 + 0.25 / 2, 0.25, 0.5 + 0.75 / 2, 0.75], atol=1e-6)


def test_corrupt_or_missing_files_name_the_path(vgg):
    ds = A.vgginstruments(vgg, vgg / "metadata" / "vgginstruments_test.csv", mask_dir=vgg / "masks")
    wav = vgg / "audio" / "sample0000.wav"
    wav.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(DataFileError) as e:
        ds[0]
    assert e.value.path == str(wav)
    (vgg / "frames" / "sample0001.jpg").unlink()
    with pytest.raises(DataFileError, match="sample0001.jpg"):
        ds[1]
    with pytest.raises(DataFileError, match="mask"):
        A.vgginstruments(vgg, vgg / "metadata" / "vgginstruments_test.csv", mask_dir=vgg / "frames")
