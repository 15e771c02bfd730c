"""Chapter 2's controls: prior BCE, per-loss gradient norms, the presence head, the grouping flags,
the results format, the CPU-precision rule."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from avgnbook.diagnostics import PresenceCNN, audio_probe, gradient_norms, prior_bce


def test_prior_bce_is_the_entropy_of_the_class_frequencies():
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])  # p = 0.75, 0.25
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert prior_bce(labels) == pytest.approx(h)  # both classes have the same binary entropy
    # and it is the BCE of predicting each class with its frequency
    p = labels.mean(0).expand_as(labels)
    assert prior_bce(labels) == pytest.approx(float(nn.functional.binary_cross_entropy(p, labels)))


def test_gradient_norms_per_loss_and_group_match_autograd_and_leave_grads_alone():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(2, 1)
    x = torch.randn(5, 3)
    h = a(x)
    parts = {"only_a": h.pow(2).sum(), "both": b(h).sum()}
    rows = gradient_norms(nn.Sequential(a, b), parts, {"a": a, "b": b}, weights={"both": 2.0})
    got = {(r["loss"], r["module"]): r["grad_norm"] for r in rows}
    assert got[("only_a", "b")] == 0.0
    ga = torch.autograd.grad(2.0 * b(a(x)).sum(), list(a.parameters()))
    assert got[("both", "a")] == pytest.approx(math.sqrt(sum(float(g.pow(2).sum()) for g in ga)), rel=1e-6)
    assert all(p.grad is None for p in a.parameters())


def test_presence_head_shared_and_per_class():
    from avgn.methods.avgn import PresenceHead

    emb = torch.randn(4, 3, 8)
    shared, per = PresenceHead(8, 3, "shared"), PresenceHead(8, 3, "per_class")
    assert torch.allclose(shared(emb), emb @ shared.weight[0] + shared.bias[0])
    want = torch.stack([emb[:, c] @ per.weight[c] + per.bias[c] for c in range(3)], dim=1)
    assert torch.allclose(per(emb), want, atol=1e-6)
    # a shared head gives every class the same logit when the class embeddings are equal
    same = emb[:, :1].expand(-1, 3, -1)
    assert torch.allclose(shared(same)[:, 0:1].expand(-1, 3), shared(same))
    with pytest.raises(ValueError, match="shared"):
        PresenceHead(8, 3, "nope")


def test_token_residual_flag_changes_only_the_residual():
    from avgn.models.grouping import GroupingBlock

    torch.manual_seed(0)
    on = GroupingBlock(16, 4, heads=2, token_residual=True)
    off = GroupingBlock(16, 4, heads=2, token_residual=False)
    off.load_state_dict(on.state_dict())
    t, x = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    g_on, a_on = on(t, x)
    g_off, a_off = off(t, x)
    assert torch.equal(a_on, a_off)
    assert not torch.allclose(g_on, g_off)
    assert "token_residual=False" in repr(off)


def test_paper_design_config():
    from avgn.methods.avgn import PAPER_DESIGN, AVGNConfig

    p = AVGNConfig.paper()
    assert (p.token_residual, p.presence_head, p.w_audio_cls) == (True, "shared", 1.0)
    assert AVGNConfig().presence_head == "per_class" and AVGNConfig().w_audio_cls == 100.0
    assert set(PAPER_DESIGN) <= set(AVGNConfig.__dataclass_fields__)


def test_linear_probe_finds_a_linearly_coded_class():
    rng = np.random.default_rng(0)

    def batches(n):
        out = []
        for _ in range(4):
            lab = torch.zeros(n, 3)
            lab[torch.arange(n), torch.as_tensor(rng.integers(0, 3, n))] = 1.0
            spec = (lab @ torch.eye(3, 5) * 3 + torch.as_tensor(rng.normal(size=(n, 5)), dtype=torch.float32))
            out.append({"spec": spec, "labels": lab})
        return out

    res = audio_probe(lambda s: s, batches(50), batches(50))
    assert res["probe_f1"] > 0.9 and res["n_train"] == 200
    assert PresenceCNN(7)(torch.randn(2, 1, 33, 17)).shape == (2, 7)


def test_results_round_trip_and_validation(tmp_path):
    from avgnbook.results import COLUMNS, read_results, to_results, write_results

    long = pd.DataFrame({"variant": ["AVGN"] * 5, "method": "avgn", "seed": [0] * 5, "set": "test/duet/scene", "mode": "oracle",
                         "metric": ["cap", "n", "piap", "n_pairs", "n_samples"], "value": [0.5, 200, 0.25, 400, 200]})
    df = to_results(long, "03")
    assert tuple(df.columns) == COLUMNS and list(df["metric"]) == ["cap", "piap"]  # counts dropped
    path = write_results(df, "t", tmp_path)
    back = read_results("t", tmp_path)
    assert back["chapter"].tolist() == ["03", "03"] and back["value"].tolist() == [0.5, 0.25]
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        write_results(df.assign(value=[0.5, 1.5]), "bad", tmp_path)
    diag = write_results(df.assign(value=[-0.02, 1.5]), "diag", tmp_path, fractions=False)  # a cosine, a loss ratio
    assert read_results("diag", tmp_path)["value"].tolist() == [-0.02, 1.5] and diag.name == "diag.csv"
    with pytest.raises(KeyError, match="variant"):
        to_results(long.drop(columns="variant"), "03")
    with pytest.raises(FileNotFoundError, match="execute the chapter"):
        read_results("missing", tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    from avgnbook.results import with_set_parts

    parts = with_set_parts(back)
    assert parts[["split", "task", "layout"]].iloc[0].tolist() == ["test", "duet", "scene"]
    with pytest.raises(ValueError, match="split/task/layout"):
        with_set_parts(back.assign(set="test/duet"))


def test_native_bf16_follows_the_cpu_flags(monkeypatch):
    from avgn import env

    monkeypatch.setattr(env, "cpu_flags", lambda: {f: f == "avx2" for f in env.CPU_FLAGS})
    assert not env.native_bf16("cpu")
    monkeypatch.setattr(env, "cpu_flags", lambda: {f: f in ("avx2", "avx512f", "avx512_bf16") for f in env.CPU_FLAGS})
    assert env.native_bf16("cpu")


def test_map_orientation_scores_the_map_its_negation_and_a_constant():
    """One 4x4 frame, a 2x2 source: the mask as the map has AP 1; its negation ranks the 12
    background pixels first (one tie) and then all 16, so AP = 4/16, which is also the AP of a
    constant map (one tie of all pixels: precision 4/16 at recall 1)."""
    from avgnbook.diagnostics import map_orientation
    from avgn.evaluate import SetName, SetPredictions

    masks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    masks[0, 0, 1:3, 1:3] = True
    p = SetPredictions(SetName.parse("val/solo/scene"), "shared", masks.float(), masks, torch.tensor([[0]]), torch.tensor([[1.0, 0.0]]), ["s0"])
    r = map_orientation(p)
    assert r["map"] == pytest.approx(1.0)
    assert r["negated"] == pytest.approx(0.25)
    assert r["constant"] == pytest.approx(0.25)


def test_gradient_heatmap_one_panel_per_design_and_blank_zeros():
    from avgn.viz import gradient_heatmap

    grads = pd.DataFrame({
        "design": ["a"] * 4 + ["b"] * 4,
        "module": ["enc", "enc", "head", "head"] * 2,
        "loss": ["loc", "cls"] * 4,
        "grad_norm": [10.0, 0.1, 0.0, 1.0, 5.0, 5.0, 0.0, 2.0],
    })
    fig = gradient_heatmap(grads)
    panels = [ax for ax in fig.axes if ax.get_title() in ("a", "b")]
    assert [ax.get_title() for ax in panels] == ["a", "b"]
    assert sorted(t.get_text() for t in panels[0].texts) == ["0.1", "1", "10"]  # the zero cell is blank
    img = panels[0].images[0].get_array()
    assert img.mask[1, 0] and img[0, 0] == pytest.approx(1.0)  # log10(10); columns follow first appearance


class _Fixed(nn.Module):
    """A stand-in model whose outputs are given tensors (the batch only supplies shapes)."""

    def __init__(self, **outputs: torch.Tensor) -> None:
        super().__init__()
        self.outputs = outputs
        self.cfg = type("Cfg", (), {"cycle_temp": 0.07, "graph": "regions"})()

    def forward(self, spec=None, visual_feats=None, image=None):
        return dict(self.outputs)


def _batch(b: int) -> dict:
    return {"spec": torch.zeros(b, 1, 4, 4), "visual_feats": torch.zeros(b, 2, 1, 1)}


def test_audio_embedding_collapse_is_the_mean_pairwise_cosine():
    from avgnbook.diagnostics import audio_embedding_collapse

    e = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # cos: (0,1) = 1, (0,2) = (1,2) = 0
    assert audio_embedding_collapse(_Fixed(audio_emb=e), [_batch(3)]) == pytest.approx(2 / 6)
    assert audio_embedding_collapse(_Fixed(audio_emb=e[:1].repeat(4, 1)), [_batch(4)]) == pytest.approx(1.0)
    slots = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])  # [B=2, K=2, D]: 4 vectors
    assert audio_embedding_collapse(_Fixed(slots=slots), [_batch(2)]) == pytest.approx(4 / 12)


def test_walk_locality_own_frame_versus_another_frame():
    from avgnbook.diagnostics import walk_locality

    # 2 frames of 2 regions, D = 4, one slot per frame (K = 1): each slot equals one region
    r = torch.eye(4).reshape(2, 2, 4)  # frame b, region q -> basis vector 2b + q
    visual = r.permute(0, 2, 1).reshape(2, 4, 1, 2)  # [B, D, h=1, w=2]
    own = walk_locality(_Fixed(slots=r[:, :1], visual_map_feats=visual), [_batch(2)])
    swapped = walk_locality(_Fixed(slots=r.flip(0)[:, :1], visual_map_feats=visual), [_batch(2)])
    # softmax over 4 regions of (1, 0, 0, 0) / 0.07: mass e^(1/0.07) / (e^(1/0.07) + 3) on the slot's region
    p = math.exp(1 / 0.07) / (math.exp(1 / 0.07) + 3)
    assert own["own_frame_mass"] == pytest.approx(p + (1 - p) / 3) and own["own_frame_top"] == 1.0
    assert swapped["own_frame_mass"] == pytest.approx(2 * (1 - p) / 3) and swapped["own_frame_top"] == 0.0
    assert own["uniform"] == 0.5
    # the frame graph: a frame's affinity is the max over its regions, so each frame is one node
    frames = _Fixed(slots=r[:, :1], visual_map_feats=visual.reshape(2, 4, 2, 1))  # square-ish: one frame per image
    frames.cfg.graph = "frames"
    q = math.exp(1 / 0.07) / (math.exp(1 / 0.07) + 1)  # softmax over 2 frames of (1, 0) / 0.07
    assert walk_locality(frames, [_batch(2)])["own_frame_mass"] == pytest.approx(q)


def test_presence_reference_run_is_kept_and_refuses_other_settings(fake_build, tmp_path):
    """The stored plain-CNN reference: trained once (history every ``eval_every`` steps and at the
    end), read back unchanged by a second call with the same settings, refused with other settings."""
    import json

    from helpers import tiny_experiment

    from avgnbook.diagnostics import presence_reference_run

    exp = tiny_experiment()
    kw = dict(steps=5, eval_every=2, val_sets=["val/duet/scene"])
    a = presence_reference_run(exp, fake_build, tmp_path, **kw)
    assert [h["step"] for h in a.history] == [2, 4, 5] and a.steps == 5
    assert all(0.0 <= h["val/duet/scene"] <= 1.0 for h in a.history)
    stored = json.loads((tmp_path / "presence_reference.json").read_text())
    assert stored["settings"]["steps"] == 5 and stored["settings"]["data"]["profile"]
    b = presence_reference_run(exp, fake_build, tmp_path, **kw)  # read back, not retrained
    assert b.history == a.history and b.seconds == a.seconds
    with pytest.raises(ValueError, match="other settings"):
        presence_reference_run(exp, fake_build, tmp_path, **{**kw, "steps": 6})
