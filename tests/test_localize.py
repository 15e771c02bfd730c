"""`avgn localize` on media the benchmark never used: outputs, selection, video input through ffmpeg
(skipped where ffmpeg is not installed, except the refusal when it is missing), and every bad input
refused with one line naming the file and the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avgn.cli import main
from avgn.localize import LocalizeInputError, localize, read_frame, read_recording, read_video, window_start
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
    broken = tone.copy()
    broken[2205] = np.nan  # at 0.10 s
    sf.write(d / "nan.wav", broken, 22050, subtype="FLOAT")
    broken = np.stack([tone, tone], 1)
    broken[[11025, 11026, 20000], 1] = [np.inf, -np.inf, np.inf]  # from 0.50 s, in one channel
    sf.write(d / "inf.wav", broken, 22050, subtype="FLOAT")
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
    above = [c for c, p in probs.items() if p >= res["presence_threshold"]]
    assert sorted(chosen) == sorted(above) and res["message"] is None  # the run's own selection: the threshold
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
    ("frame.png", "nan.wav", r"nan.wav holds 1 NaN or infinite sample\(s\) \(the first at 0.10 s\): repair the recording, or export it"),
    ("frame.png", "inf.wav", r"inf.wav holds 3 NaN or infinite sample\(s\) \(the first at 0.50 s\)"),
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
    assert main(["localize", str(runs["avgn"]), "--image", str(media["frame.png"]), "--audio", str(media["nan.wav"]),
                 "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avgn: error: the audio") and "nan.wav holds 1 NaN or infinite sample" in err and err.count("\n") == 1


def _with_threshold(run: Path, dest: Path, threshold: float) -> Path:
    """A copy of the finished ``run`` whose validation-chosen presence threshold is ``threshold``."""
    shutil.copytree(run, dest)
    info = json.loads((dest / "run.json").read_text())
    info["presence_threshold"] = threshold
    (dest / "run.json").write_text(json.dumps(info))
    return dest


def test_auto_selection_of_no_class_says_no_sounding_source(runs, media, tmp_path, capsys):
    run = _with_threshold(runs["avgn"], tmp_path / "strict", 1.01)  # no presence probability reaches it
    res = localize(run, media["frame.png"], media["mono.flac"], out_dir=tmp_path / "out", device="cpu")
    assert res["sources"] == [] and res["message"] == "no sounding source in view" and res["selection"] == "auto"
    assert json.loads((tmp_path / "out" / "localize.json").read_text()) == res
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["localize.json"]  # no overlay, no mask
    assert len(res["presence"]) == len(json.loads((run / "config.json").read_text())["class_names"])
    assert main(["localize", str(run), "--image", str(media["frame.png"]), "--audio", str(media["mono.flac"]),
                 "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == "no sounding source in view" and out[-1].startswith("written:")  # and no source line
    # named classes are drawn whatever the presence says
    named = localize(run, media["frame.png"], media["mono.flac"], classes=next(iter(res["presence"])), out_dir=tmp_path / "named", device="cpu")
    assert len(named["sources"]) == 1 and named["message"] is None


# ---- video input (ffmpeg) -----------------------------------------------------------------------

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg is not installed (apt-get install ffmpeg)")


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


def _rerun(cmd: list[str], out: Path) -> Path:
    """Run a recorded ffmpeg command again with its output file (the last argument) replaced by ``out``."""
    subprocess.run([*cmd[:-1], str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Small videos written with ffmpeg from a smooth generated frame (codec loss stays small) and a
    4 s tone: with sound, without (-an), with a silent track, audio only, 1 s long, and a text file
    named .mp4."""
    d = tmp_path_factory.mktemp("videos")
    y, x = np.mgrid[0:64, 0:96]
    blob = 255 * np.exp(-((x - 60) ** 2 + (y - 24) ** 2) / 200.0)
    Image.fromarray(np.stack([x * 255 / 95, y * 255 / 63, blob], -1).astype(np.uint8)).save(d / "frame.png")
    t = np.arange(int(4.0 * 22050)) / 22050
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    sf.write(d / "tone.wav", tone, 22050)
    sf.write(d / "tone1s.wav", tone[:22050], 22050)
    encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    vcodec = "libx264" if "libx264" in encoders else "mpeg4"
    picture = ["-loop", "1", "-framerate", "10", "-t"]
    video = ["-c:v", vcodec, "-pix_fmt", "yuv420p"]
    _ffmpeg(*picture, "4", "-i", d / "frame.png", "-i", d / "tone.wav", *video, "-c:a", "aac", "-shortest", d / "clip.mp4")
    _ffmpeg(*picture, "4", "-i", d / "frame.png", *video, "-an", d / "mute.mp4")
    _ffmpeg(*picture, "1", "-i", d / "frame.png", "-i", d / "tone1s.wav", *video, "-c:a", "aac", "-shortest", d / "short.mp4")
    _ffmpeg("-i", d / "tone.wav", "-c:a", "aac", d / "audio_only.m4a")
    _ffmpeg(*picture, "4", "-i", d / "frame.png", "-f", "lavfi", "-t", "4", "-i", "anullsrc=r=22050:cl=mono", *video, "-c:a", "aac",
            "-shortest", d / "silent.mp4")
    (d / "fake.mp4").write_text("not a video")
    return {p.name: p for p in d.iterdir()}


@needs_ffmpeg
def test_video_gives_the_maps_of_the_frame_and_audio_ffmpeg_extracts(runs, videos, tmp_path):
    res = localize(runs["avgn"], video=videos["clip.mp4"], time=2.0, out_dir=tmp_path / "video", device="cpu")
    assert json.loads((tmp_path / "video" / "localize.json").read_text()) == res
    v = res["video"]
    assert v["file"] == res["image"] == res["audio"] == str(videos["clip.mp4"]) and v["time_s"] == 2.0
    assert v["window_s"] == res["window_s"] == [0.5, 3.5] and v["duration_s"] == pytest.approx(4.0, abs=0.05)
    assert res["audio_sample_rate"] == 22050 and res["audio_channels"] == 1 and res["resampled_to"] == 16000
    assert v["ffmpeg"]["frame"][0] == shutil.which("ffmpeg") and "-ss" in v["ffmpeg"]["frame"] and v["ffprobe"][-1] == v["file"]
    assert "--video" in res["command"] and "--time 2" in res["command"]
    # the same maps as the frame and the audio the recorded ffmpeg commands extract: identical
    frame = _rerun(v["ffmpeg"]["frame"], tmp_path / "frame.png")
    audio = _rerun(v["ffmpeg"]["audio"], tmp_path / "audio.wav")
    ref = localize(runs["avgn"], frame, audio, offset=0.5, out_dir=tmp_path / "ref", device="cpu")
    assert res["sources"] == ref["sources"] and res["presence"] == ref["presence"]
    for s in res["sources"]:
        assert (tmp_path / "video" / s["overlay"]).read_bytes() == (tmp_path / "ref" / s["overlay"]).read_bytes()
    # ... which are the original frame and tone up to the codecs' loss: the audio path's presence
    # agrees; the maps of the tiny one-epoch test model change with any pixel noise, so the frame is
    # compared pixel by pixel instead
    assert float((read_frame(frame) - read_frame(videos["frame.png"])).abs().mean()) < 4 / 255
    ours, theirs = (read_recording(a, 16000, 3.0, 0.5).wave for a in (audio, videos["tone.wav"]))
    assert np.corrcoef(ours, theirs)[0, 1] > 0.99
    names = ",".join(s["name"] for s in res["sources"])
    orig = localize(runs["avgn"], videos["frame.png"], videos["tone.wav"], offset=0.5, classes=names, out_dir=tmp_path / "orig", device="cpu")
    assert [s["presence"] for s in res["sources"]] == pytest.approx([s["presence"] for s in orig["sources"]], abs=0.02)
    assert res["presence"] == pytest.approx(orig["presence"], abs=0.02)


@needs_ffmpeg
def test_video_window_is_centred_on_the_time_and_shifted_inside_the_clip(videos, tmp_path):
    def window(time: float | None) -> tuple[float, list[float]]:
        frame, rec, record = read_video(videos["clip.mp4"], 16000, 3.0, tmp_path, time)
        assert frame.shape == (3, 64, 96) and rec.wave.shape == (48000,) and rec.offset_s == record["window_s"][0]
        return record["time_s"], record["window_s"]

    assert window(2.5) == (2.5, [1.0, 4.0])
    assert window(0.2) == (0.2, [0.0, 3.0])  # would start before 0: shifted to the start
    t, (start, end) = window(3.9)  # would end past the track: shifted to end with it
    assert t == 3.9 and 3.9 < end <= 4.1 and end - start == pytest.approx(3.0)
    assert window(None) == (2.0, [0.5, 3.5])  # default: the middle
    assert window_start(2.0, 3.0, 4.0) == 0.5 and window_start(1.0, 3.0, 2.0) == 0.0


@needs_ffmpeg
@pytest.mark.parametrize("name,time,message", [
    ("mute.mp4", 1.0, r"the video .*mute.mp4 has no audio stream: give a video with sound, or pass .*--image .*--audio"),
    ("audio_only.m4a", 1.0, r"audio_only.m4a has no video stream \(an audio-only file\)"),
    ("fake.mp4", 1.0, r"ffmpeg cannot read the video .*fake.mp4 \(.*\): it is not a video file or it is truncated; re-encode it"),
    ("clip.mp4", 4.5, r"the time stamp 4.5 s is outside the video .*clip.mp4, which lasts 4.0\d s: give a --time from 0 to under"),
    ("clip.mp4", -1.0, r"the time stamp -1 s is outside the video"),
    ("short.mp4", 0.5, r"the audio track of .*short.mp4 lasts 1.0\d s, shorter than the model's window of 3 s from 0 s: give a longer"),
    ("missing.mp4", 1.0, r"no video file .*missing.mp4"),
    ("silent.mp4", 1.0, r"the audio track of .*silent.mp4 is silent from 0 s to 3 s .*something sounds \(--time\)"),
])
def test_bad_video_is_refused_naming_the_file(runs, videos, tmp_path, name, time, message):
    with pytest.raises(LocalizeInputError, match=message):
        localize(runs["avgn"], video=videos.get(name, tmp_path / name), time=time, out_dir=tmp_path, device="cpu")


def test_video_without_ffmpeg_is_refused_with_the_fix(runs, tmp_path, monkeypatch, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 64)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no ffmpeg / ffprobe on PATH, installed or not
    with pytest.raises(LocalizeInputError, match=r"clip.mp4 needs ffmpeg, which is not installed .*`apt-get install ffmpeg`.*--image FRAME --audio CLIP"):
        localize(runs["avgn"], video=video, device="cpu")
    assert main(["localize", str(runs["avgn"]), "--video", str(video), "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avgn: error: reading the video") and "apt-get install ffmpeg" in err and err.count("\n") == 1


@pytest.mark.parametrize("kwargs,message", [
    ({"image": "f.png", "audio": "a.wav", "video": "v.mp4"}, "--video is exclusive with --image/--audio"),
    ({"video": "v.mp4", "offset": 1.0}, "with --video the window is centred on --time: drop --offset"),
    ({"image": "f.png", "audio": "a.wav", "time": 1.0}, "--time picks the moment of a --video"),
    ({"image": "f.png"}, "give a frame with --image and a recording with --audio, or a video with --video"),
])
def test_video_is_exclusive_with_image_and_audio(runs, kwargs, message):
    with pytest.raises(LocalizeInputError, match=message):
        localize(runs["avgn"], **kwargs)


@needs_ffmpeg
def test_command_line_video(runs, videos, media, tmp_path, capsys):
    assert main(["localize", str(runs["avgn"]), "--video", str(videos["clip.mp4"]), "--time", "2", "--out", str(tmp_path / "cli"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "video: frame at 2 s, audio 0.50-3.50 s of" in out and (tmp_path / "cli" / "localize.json").is_file()
    assert main(["localize", str(runs["avgn"]), "--video", str(videos["clip.mp4"]), "--image", str(media["frame.png"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avgn: error: --video is exclusive") and err.count("\n") == 1
