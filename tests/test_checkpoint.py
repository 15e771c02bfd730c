"""Checkpoints: round trip (weights, optimiser, scheduler, RNG), weights-only loading, atomicity."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from avgn import checkpoint as ck


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def _opt_sched(model: nn.Module):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return opt, sched


def _steps(model, opt, sched, n: int = 3, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(5, 3, 8, 8, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_round_trip_weights_optimizer_scheduler_rng(tmp_path):
    m = _model()
    opt, sched = _opt_sched(m)
    _steps(m, opt, sched)
    random.seed(3)
    np.random.seed(4)
    np.random.randn()  # leaves a cached Gaussian in NumPy's legacy state
    torch.manual_seed(5)
    commit = ck.save_checkpoint(tmp_path, m, epoch=1, step=3, optimizer=opt, scheduler=sched, state={"best": 0.5}, config={"a": 1})
    expected_draws = _draws()
    _steps(m, opt, sched, n=2, seed=9)
    expected_params = [p.detach().clone() for p in m.parameters()]

    m2 = _model(seed=123)
    opt2, sched2 = _opt_sched(m2)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    info = ck.load_checkpoint(tmp_path, m2, optimizer=opt2, scheduler=sched2, restore_rng=True)
    assert info["epoch"] == 1 and info["step"] == 3 and info["state"] == {"best": 0.5} and info["config"] == {"a": 1}
    assert json.loads(commit.read_text())["files"]["weights"].endswith(".safetensors")
    assert _draws() == expected_draws  # Python, NumPy (incl. Gaussian cache), torch restored
    _steps(m2, opt2, sched2, n=2, seed=9)
    for a, b in zip(expected_params, m2.parameters()):
        assert torch.equal(a, b)  # optimiser moments and LR schedule restored exactly
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_train_state_loads_weights_only(tmp_path):
    m = _model()
    opt, sched = _opt_sched(m)
    _steps(m, opt, sched)
    ck.save_checkpoint(tmp_path, m, epoch=2, step=6, optimizer=opt, scheduler=sched)
    info = ck.read_checkpoint_info(tmp_path)
    payload = torch.load(ck.checkpoint_dir(tmp_path) / info["files"]["train_state"], weights_only=True)
    assert set(payload) >= {"optimizer", "scheduler", "rng", "epoch", "step"}
    assert isinstance(payload["rng"]["python"]["state"], torch.Tensor)
    assert isinstance(payload["rng"]["numpy"]["key"], torch.Tensor)


def test_excluded_prefixes_and_mismatch_errors(tmp_path):
    m = _model()
    ck.save_checkpoint(tmp_path, m, epoch=1, step=1, exclude_prefixes=("0.",))
    from safetensors.torch import load_file

    info = ck.read_checkpoint_info(tmp_path)
    keys = set(load_file(str(ck.checkpoint_dir(tmp_path) / info["files"]["weights"])))
    assert not any(k.startswith("0.") for k in keys) and "4.weight" in keys
    m2 = _model(seed=7)
    ck.load_checkpoint(tmp_path, m2)  # the excluded conv keeps its own weights, the rest is loaded
    assert torch.equal(m2[4].weight, m[4].weight) and not torch.equal(m2[0].weight, m[0].weight)
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ck.CheckpointError, match="do not fit"):
        ck.load_checkpoint(tmp_path, other)


def test_crash_mid_write_leaves_previous_checkpoint_valid(tmp_path, monkeypatch):
    m = _model()
    ck.save_checkpoint(tmp_path, m, epoch=1, step=10, state={"tag": "first"})
    before = {p.name: p.read_bytes() for p in ck.checkpoint_dir(tmp_path).iterdir()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)

    # crash while writing the optimiser/RNG file (after the new weights file was written)
    real_save = torch.save

    def exploding_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # the temporary file is fully written ...
        raise KeyboardInterrupt("power cut")  # ... but the process dies before os.replace

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, m, epoch=2, step=20, state={"tag": "second"})
    monkeypatch.setattr(torch, "save", real_save)

    info = ck.read_checkpoint_info(tmp_path)
    assert info["epoch"] == 1 and info["state"] == {"tag": "first"}
    assert not any(".tmp" in p.name for p in ck.checkpoint_dir(tmp_path).iterdir())
    m2 = _model(seed=99)
    ck.load_checkpoint(tmp_path, m2)  # verifies the SHA-256 of every referenced file
    for name, data in before.items():
        assert (ck.checkpoint_dir(tmp_path) / name).read_bytes() == data
    for a, b in zip(_model().parameters(), m2.parameters()):
        assert torch.equal(a, b)

    # the next successful save commits and removes the orphaned files of the crashed one
    ck.save_checkpoint(tmp_path, m, epoch=2, step=20, state={"tag": "second"})
    names = sorted(p.name for p in ck.checkpoint_dir(tmp_path).iterdir())
    assert names == ["last-e0001-s00000010.pt", "last-e0001-s00000010.safetensors",  # the previous one, kept
                     "last-e0002-s00000020.pt", "last-e0002-s00000020.safetensors", "last.json", "last.prev.json"]
    assert ck.load_checkpoint(tmp_path, _model())["state"] == {"tag": "second"}
    # one generation back is kept, no more
    ck.save_checkpoint(tmp_path, m, epoch=3, step=30)
    names = sorted(p.name for p in ck.checkpoint_dir(tmp_path).iterdir())
    assert names == ["last-e0002-s00000020.pt", "last-e0002-s00000020.safetensors",
                     "last-e0003-s00000030.pt", "last-e0003-s00000030.safetensors", "last.json", "last.prev.json"]


def test_corrupt_file_is_detected(tmp_path):
    m = _model()
    ck.save_checkpoint(tmp_path, m, epoch=1, step=1)
    info = ck.read_checkpoint_info(tmp_path)
    p = ck.checkpoint_dir(tmp_path) / info["files"]["weights"]
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.load_checkpoint(tmp_path, _model())
    assert ck.load_checkpoint(tmp_path / "nothing", _model()) is None


def _two_checkpoints(tmp_path):
    m = _model()
    ck.save_checkpoint(tmp_path, m, epoch=1, step=10, state={"tag": "first"})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ck.save_checkpoint(tmp_path, m, epoch=2, step=20, state={"tag": "second"})
    return ck.checkpoint_dir(tmp_path)


def _fall_back(message: str) -> None:
    """Run the `mv PREV CURRENT` the error message names."""
    import re
    import shutil

    src, dst = re.search(r"`mv (\S+) (\S+)`", message).groups()
    shutil.move(src, dst)


def test_truncated_weights_are_refused_and_the_previous_checkpoint_is_intact(tmp_path):
    folder = _two_checkpoints(tmp_path)
    w = folder / ck.read_checkpoint_info(tmp_path)["files"]["weights"]
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # truncated safetensors
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_checkpoint(tmp_path, _model(seed=3))
    msg = str(err.value)
    assert str(w) in msg and "truncated or modified" in msg and "epoch 1, step 10" in msg and "mv " in msg
    _fall_back(msg)
    m = _model(seed=3)
    info = ck.load_checkpoint(tmp_path, m)
    assert info["epoch"] == 1 and info["state"] == {"tag": "first"}
    assert all(torch.equal(a, b) for a, b in zip(_model().parameters(), m.parameters()))


def test_edited_commit_state_is_refused(tmp_path):
    folder = _two_checkpoints(tmp_path)
    commit = folder / "last.json"
    d = json.loads(commit.read_text())
    d["state"]["tag"] = "edited"  # a hand edit of the training state (e.g. the best score)
    commit.write_text(json.dumps(d, indent=2))
    with pytest.raises(ck.CheckpointError, match=r"modified after it was written.*epoch 1, step 10"):
        ck.read_checkpoint_info(tmp_path)
    commit.write_text("{ not json")
    with pytest.raises(ck.CheckpointError, match=r"not valid JSON.*epoch 1, step 10"):
        ck.load_checkpoint(tmp_path, _model())
    # and with no previous checkpoint the message says so
    single = tmp_path / "single"
    ck.save_checkpoint(single, _model(), epoch=1, step=1)
    (ck.checkpoint_dir(single) / "last.json").write_text("[]")
    with pytest.raises(ck.CheckpointError, match="not a checkpoint commit file.*no previous checkpoint"):
        ck.read_checkpoint_info(single)
