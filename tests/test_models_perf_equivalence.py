"""The performance paths of the models equal the reference computations they replace.

* :class:`TokenTransformer` runs its ``nn.TransformerEncoder`` layers through our own batch-first
  attention: outputs and gradients equal ``encoder(cat([feats, tokens]))`` (train and eval mode,
  pre- and post-norm).
* :class:`GroupingBlock`'s pre-assignment cross-attention equals ``nn.MultiheadAttention``.
* :meth:`AVGN.localize` and the localisation loss score in fp32 under bf16 autocast, so a bf16
  forward ranks map pixels like fp32.
* bf16 autocast + channels-last runs end to end (forward, loss, backward) with finite values.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avgn.methods.avgn import avgn_pair_scores, avgn_total_loss
from avgn.methods.avgn import AVGN, AVGNConfig
from avgn.models.config import EncoderConfig
from avgn.models.grouping import GroupingBlock, TokenTransformer
from avgn.models.grouping import _mha_forward

from helpers import SMALL_C, SMALL_D
from helpers import small_avgn as _small_avgn

D, C, B = SMALL_D, SMALL_C, 3
ENC = EncoderConfig(audio_width=0.125)


def small_avgn(**kw) -> AVGNConfig:
    return _small_avgn(**{"depth": 2, **kw})


def _randn(*shape: int, seed: int = 0, grad: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    return x.requires_grad_(grad)


def _grads(module: torch.nn.Module, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None] + [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("norm_first", [True, False])
def test_token_transformer_equals_torch_encoder(train, norm_first):
    torch.manual_seed(0)
    tt = TokenTransformer(D, depth=2, heads=4, mlp_ratio=2.0).train(train)
    for layer in tt.encoder.layers:
        layer.norm_first = norm_first
    feats, tokens = _randn(B, 11, D, seed=1, grad=True), _randn(B, C, D, seed=2, grad=True)
    fo, to = tt(feats, tokens)
    (fo.square().sum() + to.sin().sum()).backward()
    ours = [fo.detach(), to.detach()] + _grads(tt, feats, tokens)
    tt.zero_grad()
    feats.grad = tokens.grad = None
    ref = tt.encoder(torch.cat([feats, tokens], 1))
    (ref[:, :11].square().sum() + ref[:, 11:].sin().sum()).backward()
    refs = [ref[:, :11].detach(), ref[:, 11:].detach()] + _grads(tt, feats, tokens)
    assert len(ours) == len(refs)
    for a, b in zip(ours, refs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_token_transformer_eval_no_grad_equals_torch_fastpath():
    torch.manual_seed(0)
    tt = TokenTransformer(D, depth=3, heads=4).eval()
    feats, tokens = _randn(B, 9, D, seed=3), _randn(B, C, D, seed=4)
    with torch.inference_mode():
        fo, to = tt(feats, tokens)
        ref = tt.encoder(torch.cat([feats, tokens], 1))  # torch's fused inference path
    torch.testing.assert_close(torch.cat([fo, to], 1), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_cross_attention_equals_multihead_attention(train):
    torch.manual_seed(0)
    gb = GroupingBlock(D, C, heads=4).train(train)
    q, kv = _randn(B, C, D, seed=5, grad=True), _randn(B, 13, D, seed=6, grad=True)
    ours = _mha_forward(gb.pre_attn, q, kv)
    ours.sum().backward()
    g_ours = _grads(gb.pre_attn, q, kv)
    gb.zero_grad()
    q.grad = kv.grad = None
    ref = gb.pre_attn(q, kv, kv, need_weights=False)[0]
    ref.sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_ours, _grads(gb.pre_attn, q, kv)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_self_attention_equals_multihead_attention():
    torch.manual_seed(0)
    tt = TokenTransformer(D, depth=1, heads=4).eval()
    mha = tt.encoder.layers[0].self_attn
    x = _randn(B, 17, D, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(_mha_forward(mha, x), mha(x, x, x, need_weights=False)[0], rtol=1e-4, atol=1e-5)


def test_grouping_block_output_equals_reference_attention():
    torch.manual_seed(0)
    gb = GroupingBlock(D, C, heads=4).eval()
    tokens, feats = _randn(B, C, D, seed=8), _randn(B, 20, D, seed=9)
    with torch.no_grad():
        grouped, assign = gb(tokens, feats)
        t, x = gb.norm_tokens(tokens), gb.norm_feats(feats)
        t = t + gb.pre_attn(gb.norm_pre(t), x, x, need_weights=False)[0]
        logits = torch.einsum("bnd,bcd->bnc", gb.k(x), gb.q(t)) * gb.scale
        a = logits.softmax(-1)
        w = a / (a.sum(1, keepdim=True) + gb.assign_eps)
        g = gb.out(torch.einsum("bnc,bnd->bcd", w, gb.v(x))) + t
        g = g + gb.mlp(gb.norm_out(g))
    torch.testing.assert_close(assign, a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grouped, g, rtol=1e-4, atol=1e-5)


def test_localize_and_pair_scores_fp32_under_autocast():
    torch.manual_seed(0)
    model = AVGN(small_avgn()).eval()
    with torch.no_grad():
        out = model(spec=_randn(B, 1, 65, 40, seed=10), visual_feats=torch.relu(_randn(B, 512, 7, 7, seed=11)))
    ref = {t: model.localize(out, target=t) for t in ("features", "gated")}
    bf = {k: v.bfloat16() if v.is_floating_point() else v for k, v in out.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for t in ("features", "gated"):
            maps = model.localize(bf, target=t)
            assert maps.dtype == torch.float32
            torch.testing.assert_close(maps, model.localize({k: v.float() for k, v in bf.items()}, target=t))
            assert (maps - ref[t]).abs().max() < 0.05
        classes = torch.tensor([[1, 3], [0, -1], [2, 4]])
        a2v, v2a, rows = avgn_pair_scores(bf["audio_emb"], bf["visual_map_feats"], classes, classes >= 0, 0.03, "paper", bf["visual_emb"])
    assert a2v.dtype == v2a.dtype == torch.float32
    a2v32, _, _ = avgn_pair_scores(*(bf[k].float() for k in ("audio_emb", "visual_map_feats")), classes, classes >= 0, 0.03, "paper", bf["visual_emb"].float())
    torch.testing.assert_close(a2v, a2v32)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_end_to_end(channels_last):
    torch.manual_seed(0)
    model = AVGN(small_avgn(depth=1, encoder=EncoderConfig(audio_width=0.125))).train()
    image = torch.rand(B, 3, 64, 64)
    spec = _randn(B, 1, 65, 40, seed=12)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(B, C)
    labels[0, 1] = labels[1, 2] = labels[1, 4] = labels[2, 0] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(image=image, spec=spec)
        loss, parts = avgn_total_loss(out, {"labels": labels}, model.cfg)
    assert out["visual_map_feats"].dtype == out["audio_map_feats"].dtype == torch.bfloat16  # convs ran in bf16
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == ["audio.proj.weight", "audio.proj.bias"]  # audio_global is not in the loss (also in fp32)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_bf16_maps_rank_like_fp32():
    torch.manual_seed(0)
    model = AVGN(small_avgn()).eval()
    spec, feats = _randn(4, 1, 65, 40, seed=13), torch.relu(_randn(4, 512, 7, 7, seed=14))
    with torch.inference_mode():
        m32 = model.localize(model(spec=spec, visual_feats=feats)).flatten(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m16 = model.localize(model(spec=spec, visual_feats=feats)).flatten(2)
    r32, r16 = m32.argsort(-1).argsort(-1).double(), m16.argsort(-1).argsort(-1).double()
    rho = F.cosine_similarity(r32 - r32.mean(-1, keepdim=True), r16 - r16.mean(-1, keepdim=True), dim=-1)
    assert rho.mean() > 0.97


# --------------------------------------------------------------------------------------------------
# BatchNorm folded into the convolutions (eval mode, no autograd)
# --------------------------------------------------------------------------------------------------
def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))


def _trunks():
    from avgn.models.encoders import AudioResNet18, build_resnet18_trunk

    return [(AudioResNet18(1, 0.25), (2, 1, 65, 70)), (build_resnet18_trunk(), (2, 3, 64, 96))]


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bn_folding_equals_reference(index, channels_last):
    torch.manual_seed(0)
    net, shape = _trunks()[index]
    _randomise_bn(net)
    net.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    ref = net(x).detach()  # grad enabled: the reference conv -> BatchNorm path
    with torch.no_grad():
        folded = net(x)
    with torch.inference_mode():
        folded_inf = net(x)
    torch.testing.assert_close(folded, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded_inf, folded)
    # bf16 autocast: folded weights are written in bf16 directly; close to the bf16 reference path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref16 = net(x).detach()
        with torch.no_grad():
            fold16 = net(x)
    assert fold16.dtype == ref16.dtype == torch.bfloat16
    assert (fold16.float() - ref.float()).abs().max() <= 4 * (ref16.float() - ref.float()).abs().max() + 1e-3


def test_bn_folding_not_used_when_training_or_hooked():
    torch.manual_seed(0)
    net, shape = _trunks()[1]
    _randomise_bn(net)
    x = torch.randn(*shape)
    net.train()
    before = net.bn1.running_mean.clone()
    with torch.no_grad():
        net(x)
    assert not torch.equal(before, net.bn1.running_mean)  # training mode: batch statistics, updated
    net.eval()
    seen = []
    handle = net.layer1[0].bn1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        out = net(x)
    handle.remove()
    assert len(seen) == 1  # the hooked module ran: the folded path is skipped when hooks are present
    with torch.no_grad():
        torch.testing.assert_close(net(x), out, rtol=1e-4, atol=1e-4)


def test_frozen_backbone_features_folded_in_training():
    torch.manual_seed(0)
    from avgn.models.encoders import VisualEncoder

    enc = VisualEncoder(EncoderConfig(freeze_visual=True, dim=D)).train()
    _randomise_bn(enc.backbone)
    image = torch.rand(2, 3, 64, 64)
    feats = enc.backbone_features(image)  # frozen: no_grad inside, BatchNorm in eval -> folded
    ref = enc.backbone(((image - enc.input_mean) / enc.input_std).requires_grad_())
    torch.testing.assert_close(feats, ref.detach(), rtol=1e-4, atol=1e-4)
    assert enc.backbone.training is False and enc.proj.training is True


def test_avgn_eval_forward_matches_reference_path():
    torch.manual_seed(0)
    model = AVGN(small_avgn()).eval()
    _randomise_bn(model)
    image, spec = torch.rand(2, 3, 64, 64), _randn(2, 1, 65, 40, seed=15)
    ref = model(image=image, spec=spec)  # grad enabled: reference BatchNorm path
    with torch.inference_mode():
        fast = model(image=image, spec=spec)
        maps = model.localize(fast)
    for key in ("visual_map_feats", "audio_emb", "visual_emb", "audio_logits", "assign_audio"):
        torch.testing.assert_close(fast[key], ref[key].detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(maps, model.localize(ref).detach(), rtol=1e-4, atol=1e-4)


def test_attention_hooks_still_fire():
    torch.manual_seed(0)
    tt = TokenTransformer(D, depth=1, heads=4).eval()
    gb = GroupingBlock(D, C, heads=4).eval()
    seen = []
    h1 = tt.encoder.layers[0].self_attn.register_forward_hook(lambda m, i, o: seen.append("self"))
    h2 = gb.pre_attn.register_forward_hook(lambda m, i, o: seen.append("cross"))
    feats, tokens = _randn(B, 9, D, seed=16), _randn(B, C, D, seed=17)
    with torch.no_grad():
        hooked = tt(feats, tokens)
        gb(tokens, feats)
    h1.remove()
    h2.remove()
    assert seen == ["self", "cross"]
    with torch.no_grad():
        for a, b in zip(tt(feats, tokens), hooked):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_double_precision_attention_stays_double():
    torch.manual_seed(0)
    tt = TokenTransformer(D, depth=1, heads=4).double().eval()
    feats, tokens = _randn(B, 9, D, seed=18).double(), _randn(B, C, D, seed=19).double()
    with torch.no_grad():
        fo, to = tt(feats, tokens)
        ref = tt.encoder(torch.cat([feats, tokens], 1))
    assert fo.dtype == torch.float64
    torch.testing.assert_close(torch.cat([fo, to], 1), ref, rtol=1e-10, atol=1e-10)
