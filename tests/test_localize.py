"""`avgn localize` on media the benchmark never used: outputs, selection, and every bad input refused
with one line naming the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avgn.cli import main
from avgn.localize import LocalizeInputError, localize, read_recording
from avgn.train import train
from helpers import tiny_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(fake_build, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("localize_runs")
    out = {}
    for m in ("avgn", "ezvsl", "mal"):
        out[m] = root / m
        train(tiny_experiment(m, **{"train.epochs": 1}), fake_build, out[m], seed=0, device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    img = (rng.random((90, 160, 3)) * 255).astype(np.uint8)  # not square, not 224: resized
    Image.fromarray(img).save(d / "frame.png")
    Image.fromarray(img).save(d / "frame.jpg", quality=90)
    t = np.arange(int(4.0 * 22050)) / 22050
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(d / "stereo.wav", np.stack([tone, 0.5 * tone], 1), 22050)  # stereo at 22.05 kHz: down-mixed, resampled
    sf.write(d / "mono.flac", tone, 22050)
    sf.write(d / "short.wav", tone[:22050], 22050)
    sf.write(d / "silent.wav", np.zeros_like(tone), 22050)
    sf.write(d / "six.wav", np.stack([tone] * 6, 1), 22050)
    (d / "truncated.png").write_bytes((d / "frame.png").read_bytes()[:200])
    wav = (d / "stereo.wav").read_bytes()
    (d / "garbage.wav").write_bytes(b"RIFF" + wav[4:40])
    (d / "notes.txt").write_text("not an image")
    return {p.name: p for p in d.iterdir()}


def test_avgn_auto_selection_writes_overlays_masks_and_json(runs, media, tmp_path):
    res = localize(runs["avgn"], media["frame.png"], media["stereo.wav"], out_dir=tmp_path / "out", device="cpu")
    data = json.loads((tmp_path / "out" / "localize.json").read_text())
    assert data == res and res["selection"] == "auto" and res["audio_channels"] == 2 and res["resampled_to"] == 16000
    assert res["image_size"] == [160, 90] and len(res["sources"]) >= 1
    probs = res["presence"]
    chosen = [s["name"] for s in res["sources"]]
    above = [c for c, p in probs.items() if p >= res["presence_threshold"]] or [max(probs, key=probs.get)]
    assert sorted(chosen) == sorted(above)  # the run's own selection: threshold, at least the top class
    for s in res["sources"]:
        over = np.asarray(Image.open(tmp_path / "out" / s["overlay"]))
        mask = np.asarray(Image.open(tmp_path / "out" / s["mask"]))
        assert over.shape == (90, 160, 3) and mask.shape == (90, 160) and set(np.unique(mask)) <= {0, 255}
        assert 0 < s["mask_fraction"] <= 0.5 + 1e-6 and 0 <= s["peak_xy"][0] < 160 and 0 <= s["peak_xy"][1] < 90
        assert s["presence"] == pytest.approx(probs[s["name"]])
    assert res["command"].startswith("avgn localize ")


def test_named_classes_restrict_the_output_and_unknown_ones_are_refused(runs, media, tmp_path):
    names = list(json.loads((runs["avgn"] / "config.json").read_text())["class_names"])
    res = localize(runs["avgn"], media["frame.jpg"], media["mono.flac"], classes=",".join(names[:2]), out_dir=tmp_path, device="cpu")
    assert [s["name"] for s in res["sources"]] == names[:2] and res["selection"] == "given"
    with pytest.raises(LocalizeInputError, match=r"does not know the class\(es\) unicorn; it knows: "):
        localize(runs["avgn"], media["frame.png"], media["mono.flac"], classes="unicorn", out_dir=tmp_path, device="cpu")


@pytest.mark.parametrize("method,names", [("ezvsl", ["sound"]), ("mal", ["slot1", "slot2"])])
def test_class_agnostic_methods_give_their_shared_or_slot_maps(runs, media, tmp_path, method, names):
    res = localize(runs[method], media["frame.png"], media["mono.flac"], out_dir=tmp_path, device="cpu")
    assert [s["name"] for s in res["sources"]] == names and res["presence"] is None
    with pytest.raises(LocalizeInputError, match="no per-class maps: use --classes auto"):
        localize(runs[method], media["frame.png"], media["mono.flac"], classes="cat", out_dir=tmp_path, device="cpu")


@pytest.mark.parametrize("image,audio,message", [
    ("truncated.png", "mono.flac", r"cannot read the image .*truncated.png .*re-export the frame"),
    ("notes.txt", "mono.flac", r"cannot read the image .*notes.txt"),
    ("missing.png", "mono.flac", r"no image file .*missing.png"),
    ("frame.png", "garbage.wav", r"cannot decode the audio .*garbage.wav.*convert it to WAV or FLAC"),
    ("frame.png", "six.wav", r"six.wav has 6 channels: give a mono or stereo recording"),
    ("frame.png", "silent.wav", r"silent.wav is silent from 0 s to 3 s"),
    ("frame.png", "short.wav", r"short.wav lasts 1.00 s, shorter than the model's window of 3 s"),
])
def test_bad_input_is_refused_naming_the_file(runs, media, tmp_path, image, audio, message):
    img = media.get(image, tmp_path / image)
    with pytest.raises(LocalizeInputError, match=message):
        localize(runs["avgn"], img, media[audio], out_dir=tmp_path, device="cpu")


def test_unfinished_or_missing_runs_are_refused(runs, media, tmp_path):
    with pytest.raises(LocalizeInputError, match="is not a run folder"):
        localize(tmp_path, media["frame.png"], media["mono.flac"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LocalizeInputError, match=r"is not finished \(no run.json\): finish it with `avgn train"):
        localize(tmp_path, media["frame.png"], media["mono.flac"])


def test_offset_and_window(media):
    rec = read_recording(media["mono.flac"], 16000, 3.0, offset=1.0)
    assert rec.wave.shape == (48000,) and rec.source_rate == 22050 and rec.channels == 1
    with pytest.raises(LocalizeInputError, match="earlier --offset"):
        read_recording(media["mono.flac"], 16000, 3.0, offset=1.5)


def test_command_line(runs, media, tmp_path, capsys):
    assert main(["localize", str(runs["avgn"]), "--image", str(media["frame.png"]), "--audio", str(media["mono.flac"]),
                 "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    assert "written:" in capsys.readouterr().out and (tmp_path / "cli" / "localize.json").is_file()
    assert main(["localize", str(runs["avgn"]), "--image", str(media["frame.png"]), "--audio", str(media["silent.wav"]),
                 "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avgn: error: the audio") and err.count("\n") == 1  # one line, no traceback
