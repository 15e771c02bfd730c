"""DSOL through the shared engine: stage 1 clusters objects between epochs, stage 2 starts from
stage 1's run, both evaluate as a class-aware method; the maps go to the mapped classes; errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from avgn.methods import get_method
from avgn.methods.dsol import DSOL, DSOLConfig
from avgn.models.config import EncoderConfig
from avgn.runs import load_run
from avgn.train import train
from helpers import tiny_experiment

pytestmark = pytest.mark.usefixtures("one_thread")

STAGE1 = {"model.stage": 1, "model.num_clusters": 3, "train.concat_items": 0, "train.scene_items": 0, "train.epochs": 3}


def test_predict_puts_each_cluster_at_its_class():
    m = get_method("dsol")
    model = m.build(DSOLConfig(num_classes=3, num_clusters=2, dim=16, encoder=EncoderConfig(audio_width=0.125)))
    model.set_mapping(torch.tensor([2, -1]))
    cm = torch.zeros(1, 2, 2, 2)
    cm[0, 0, 0, 0] = 10.0
    out = {"class_maps": cm, "audio_cluster_logits": torch.tensor([[2.0, 0.0]])}
    pred = m.predict(model, out)
    soft = torch.softmax(3.0 * cm, dim=1)
    assert pred["maps"].shape == (1, 3, 2, 2) and torch.equal(pred["maps"][:, 2], soft[:, 0])
    assert not pred["maps"][:, :2].any()  # class 0, 1: no cluster
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert pred["audio_probs"][0].tolist() == pytest.approx([0.0, 0.0, float(p[0])])


def test_predict_joins_the_clusters_of_one_class():
    """A many-to-one mapping (``cluster_mapping='majority'``, over-clustering): a class's map is the
    highest of its clusters' maps and its presence probability the sum of theirs."""
    m = get_method("dsol")
    model = m.build(DSOLConfig(num_classes=2, num_clusters=3, dim=16, cluster_mapping="majority", encoder=EncoderConfig(audio_width=0.125)))
    model.set_mapping(torch.tensor([1, 1, 0]))
    cm = torch.randn(2, 3, 2, 2)
    out = {"class_maps": cm, "audio_cluster_logits": torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])}
    pred = m.predict(model, out)
    soft = torch.softmax(3.0 * cm, dim=1)
    assert torch.equal(pred["maps"][:, 1], torch.maximum(soft[:, 0], soft[:, 1])) and torch.equal(pred["maps"][:, 0], soft[:, 2])
    p = torch.softmax(out["audio_cluster_logits"], 1)
    assert torch.allclose(pred["audio_probs"], torch.stack([p[:, 2], p[:, 0] + p[:, 1]], 1))
    with pytest.raises(ValueError, match="cluster_mapping"):
        DSOLConfig(cluster_mapping="nearest")


def test_stage_two_targets_come_from_a_frozen_copy_of_stage_one(tmp_path):
    """Stage 2's audio category distribution is the stage-1 audio network's (the public code's
    av_model_fix): loaded from stage-1 weights, unchanged by stage-2 training of the audio trunk, in
    evaluation mode whatever the model's; a stage-2 checkpoint keeps it as it is."""
    from safetensors.torch import save_file

    from avgn.checkpoint import load_weights

    cfg1 = DSOLConfig(num_classes=3, num_clusters=3, dim=16, stage=1, encoder=EncoderConfig(visual_backbone="efficientnet_lite0", use_packaged_weights=False,
                                                                                   freeze_visual=True, audio_width=0.125))
    torch.manual_seed(0)
    s1 = DSOL(cfg1).eval()
    s1.set_dictionary(torch.randn(3, s1.dictionary.shape[1]))
    save_file({k: v.contiguous() for k, v in s1.state_dict().items()}, str(tmp_path / "s1.safetensors"))
    s2 = DSOL(DSOLConfig(**{**cfg1.__dict__, "stage": 2}))
    load_weights(s2, tmp_path / "s1.safetensors")
    for k, v in s1.audio.state_dict().items():
        assert torch.equal(s2.audio_teacher.audio.state_dict()[k], v), k
    assert torch.equal(s2.audio_teacher.head.weight, s1.audio_head.weight)
    assert not any(p.requires_grad for p in s2.audio_teacher.parameters())
    spec, feats = torch.randn(4, 1, 65, 40), torch.relu(torch.randn(4, 1280, 3, 3))
    with torch.no_grad():
        want = s1(spec=spec, visual_feats=feats)["audio_cluster_logits"]
    s2.train()
    assert not s2.audio_teacher.training and not s2.audio_teacher.audio.trunk.training
    opt = torch.optim.SGD([p for p in s2.parameters() if p.requires_grad], lr=0.5)
    out = s2(spec=spec, visual_feats=feats)
    assert torch.allclose(out["audio_cluster_logits"], want, atol=1e-5)
    trunk_before = {k: v.clone() for k, v in s2.audio.state_dict().items()}
    out["av_map"].sum().backward()
    opt.step()
    assert any(not torch.equal(trunk_before[k], v) for k, v in s2.audio.state_dict().items())  # stage 2's own trunk trains
    with torch.no_grad():
        again = s2(spec=spec, visual_feats=feats)["audio_cluster_logits"]
    assert torch.allclose(again, want, atol=1e-5)  # the targets do not drift with it
    save_file({k: v.contiguous() for k, v in s2.state_dict().items()}, str(tmp_path / "s2.safetensors"))
    s2b = DSOL(DSOLConfig(**{**cfg1.__dict__, "stage": 2}))
    load_weights(s2b, tmp_path / "s2.safetensors")  # a stage-2 checkpoint: its own teacher, not its trained trunk
    for k, v in s2.audio_teacher.state_dict().items():
        assert torch.equal(s2b.audio_teacher.state_dict()[k], v), k
    m = get_method("dsol")
    # stage 1 with mixtures is version 4, without them it trains as in version 2; stage 2 as in version 3
    assert m.training_version(cfg1) == m.version == 4 and m.training_version(s2.cfg) == 3
    assert m.training_version(DSOLConfig(**{**cfg1.__dict__, "mix_weight": 0.0})) == 2


def test_stage_two_without_a_dictionary_is_refused(fake_build, tmp_path):
    with pytest.raises(RuntimeError, match="stage-1 dictionary.*train.init_from"):
        train(tiny_experiment("dsol", **{"model.stage": 2, "train.epochs": 1}), fake_build, tmp_path / "s2", device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="no finished run there"):
        train(tiny_experiment("dsol", **{"model.stage": 2, "train.init_from": str(tmp_path / "none")}), fake_build, tmp_path / "x",
              device="cpu", progress=False)


def test_two_stages_train_cluster_and_evaluate(fake_build, tmp_path):
    from avgn.evaluate import evaluate_run

    s1 = tmp_path / "stage1"
    sum1 = train(tiny_experiment("dsol", **STAGE1), fake_build, s1, seed=0, device="cpu", progress=False)
    hist = load_run(s1)["history"]
    assert "cluster_purity" not in hist.columns or hist["cluster_purity"].isna().iloc[0]  # epoch 1: no clusters yet
    assert hist["cluster_purity"].iloc[1:].between(0, 1).all() and (hist["objects"].iloc[1:] > 0).all()
    assert "train/pseudo_cls" in hist.columns and not pd_isna(hist["train/pseudo_cls"].iloc[-1])
    assert not pd_isna(hist["train/mix_cls"].iloc[-1])  # the audio head also learned mixtures
    assert sum1["selection_modes"] == ["oracle", "predicted"]
    s2 = tmp_path / "stage2"
    sum2 = train(tiny_experiment("dsol", **{"model.stage": 2, "model.num_clusters": 3, "train.solo_items": 0, "train.epochs": 1,
                                            "train.init_from": str(s1)}), fake_build, s2, seed=0, device="cpu", progress=False)
    cfg = json.loads((s2 / "config.json").read_text())
    assert cfg["init_from"]["run"] == str(s1) and cfg["init_from"]["epoch"] == sum1["best_epoch"]
    assert "--set train.init_from=" in cfg["command"]
    assert set(load_run(s2)["history"].filter(like="train/").columns) >= {"train/kl", "train/loc", "train/total"}
    ev = evaluate_run(s2, "test", sets=["test/duet/scene"], device="cpu", progress=False, write=False)
    r = ev["results"]["test/duet/scene"]
    assert set(r) == {"oracle", "predicted"} and 0 <= r["predicted"]["cap"] <= 1 and "presence_f1" in r["predicted"]
    assert sum2["presence_threshold"] is not None
    from avgnbook.neighbours import dsol_audio_report

    for run in (s1, s2):  # stage 2 reads its frozen copy of stage 1's classifier: the same report
        rep = dsol_audio_report(run, fake_build, split="val", max_items=16)
        assert set(rep) == {"solo_top1", "duet_top1", "duet_top2_both", "duet_p1", "duet_p2"}
        assert 0 <= rep["duet_top2_both"] <= rep["duet_top1"] <= 1 and rep["duet_p2"] <= rep["duet_p1"] <= 1
    assert dsol_audio_report(s2, fake_build, split="val", max_items=16) == pytest.approx(dsol_audio_report(s1, fake_build, split="val", max_items=16))


def test_stage_one_resumes_through_the_clustering_exactly(fake_build, tmp_path):
    from avgn import checkpoint as ck
    from safetensors.torch import load_file

    exp = tiny_experiment("dsol", **STAGE1)
    train(exp, fake_build, tmp_path / "a", seed=1, device="cpu", progress=False)
    train(exp, fake_build, tmp_path / "b", seed=1, device="cpu", progress=False, stop_after_epochs=2)
    train(exp, fake_build, tmp_path / "b", seed=1, device="cpu", progress=False)

    def weights(d):
        info = ck.read_checkpoint_info(d, "last")
        return load_file(str(ck.checkpoint_dir(d) / info["files"]["weights"]))

    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # dictionary and mapping included


def test_too_many_clusters_for_the_objects_is_a_clear_error(fake_build, tmp_path):
    with pytest.raises(ValueError, match="K = 40 clusters but only"):
        train(tiny_experiment("dsol", **{**STAGE1, "model.num_clusters": 40}), fake_build, tmp_path / "k", device="cpu", progress=False)


def pd_isna(x) -> bool:
    import pandas as pd

    return bool(pd.isna(x))


def test_dsol_variants_chain_the_stages(fake_build, tmp_path, monkeypatch):
    """The store trains DSOL's second stage from its stored first stage (materialised, then
    ``train.init_from``); the second stage's id depends on the first's."""
    import avgn.store.plan as plan_mod
    from avgn.runs import load_run
    from avgn.store.plan import Evaluation, PlannedRun, build_identity, run_id
    from avgn.store.queue import store_run
    from avgn.store.records import RunStore
    from avgnbook.variants import DSOL_STAGE1_VARIANT, DSOL_VARIANT

    monkeypatch.setattr(plan_mod, "get_experiment",
                        lambda m, p="smoke", **o: tiny_experiment(m, **{"model.num_clusters": 3, "train.epochs": 2, **o}))
    val = (Evaluation("val", "val"),)
    runs = [PlannedRun(DSOL_STAGE1_VARIANT, 0, "smoke", val, ("07",)), PlannedRun(DSOL_VARIANT, 0, "smoke", val, ("07",))]
    plan = {r.key: r for r in runs}
    assert plan["dsol/seed0"].init_key == "dsol-stage1/seed0"
    store = RunStore("smoke", tmp_path / "store")
    for key in plan:
        store_run(key, "smoke", store=store, data_dir=fake_build, work_dir=tmp_path / "work", device="cpu", plan=plan)
    second = store.read("dsol/seed0", expected_id=run_id(plan["dsol/seed0"], plan, build_identity("smoke", fake_build)))
    first_dir = tmp_path / "work" / "stage" / "dsol-stage1/seed0"
    run_dir = tmp_path / "work" / "runs" / "variants" / "dsol" / "smoke" / "dsol-seed0"
    cfg = load_run(run_dir)["config"]
    assert cfg["experiment"]["train"]["init_from"] == str(first_dir) and (first_dir / "checkpoints" / "best.json").is_file()
    assert second.record["identity"]["init_from"] == store.read("dsol-stage1/seed0").record["id"]
    # the frozen teacher (stage 1's audio network) is stored once, in stage 1's record, and rebuilt at checkout
    first = store.read("dsol-stage1/seed0")
    stored2, stored1 = store.load_weights(second), store.load_weights(first)
    assert not any(k.startswith("audio_teacher.") for k in stored2)
    assert (second.record["first_stage"], second.record["first_stage_id"]) == ("dsol-stage1/seed0", first.id)
    from avgn.checkpoint import read_checkpoint_info
    from avgn.store.queue import checkout
    from safetensors.torch import load_file

    out = checkout("dsol/seed0", "smoke", tmp_path / "chapter", fake_build, store, plan)
    info = read_checkpoint_info(out["run_dir"], "best")
    loaded = load_file(str(out["run_dir"] / "checkpoints" / info["files"]["weights"]))
    teacher = {k for k in loaded if k.startswith("audio_teacher.")}
    assert teacher and all(torch.equal(loaded[k], stored1["audio." + k[len("audio_teacher.audio."):]]) for k in teacher if ".audio." in k)
    assert all(torch.equal(loaded[k], stored1["audio_head." + k[len("audio_teacher.head."):]]) for k in teacher if ".head." in k)
    assert all(torch.equal(loaded[k], stored2[k]) for k in stored2)
    # scored from the checkout, the second stage gives its stored evaluation exactly
    from avgn.evaluate import evaluate_run

    ev = evaluate_run(out["run_dir"], "val", device="cpu", progress=False, write=False)
    stored_ev = json.loads(second.path("eval_val.json").read_text())
    assert ev["results"] == stored_ev["results"]


def test_store_drops_a_second_stage_copy_of_its_first(tmp_path):
    """:meth:`RunStore.drop_first_stage_copy`: the weights lose the copied tensors, the record its old
    hash; it reads back verified and names the first stage; a record without such tensors is refused."""
    from avgn.store.records import RunStore, StoreError

    store = RunStore("smoke", tmp_path)
    w = {"audio.w": torch.ones(2, dtype=torch.float16), "audio_teacher.audio.w": torch.zeros(2, dtype=torch.float16)}
    first = store.write("s1/seed0", {"id": "a1"}, None, None, [], {"audio.w": torch.zeros(2, dtype=torch.float16)})
    store.write("s2/seed0", {"id": "b2"}, None, None, [], w)
    out = store.drop_first_stage_copy("s2/seed0", ("audio_teacher.",), first)
    again = store.read("s2/seed0")  # hashes verified
    assert set(store.load_weights(again)) == {"audio.w"} and again.id == "b2"
    assert (out.record["first_stage"], out.record["first_stage_id"]) == ("s1/seed0", "a1")
    with pytest.raises(StoreError, match="holds no tensors under"):
        store.drop_first_stage_copy("s2/seed0", ("audio_teacher.",), first)


def test_object_region_maps_by_hand():
    from avgn.methods.dsol import object_region_maps

    av = torch.tensor([[[0.2, 0.4], [0.6, 1.0]]])
    assert torch.equal(object_region_maps(av, "absolute"), av)
    rel = object_region_maps(av, "relative")
    assert rel[0].flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    # a flat map stays finite (all zero): no region but the peak fallback of masked_object_features
    assert torch.equal(object_region_maps(torch.full((1, 2, 2), 0.3), "relative"), torch.zeros(1, 2, 2))


def test_public_design_and_book_defaults_differ_only_in_the_flags():
    from dataclasses import replace

    from avgn.methods.dsol import PUBLIC_DESIGN

    book = DSOLConfig(num_classes=3, dim=16, encoder=EncoderConfig(audio_width=0.125))
    public = replace(book, **PUBLIC_DESIGN)
    assert (book.avc_loss, book.region_rule, book.cluster_features) == ("infonce", "relative", "projection")
    assert public.region_cut == public.region_threshold == 0.05 and book.region_cut == book.relative_threshold
    m = get_method("dsol")
    # the dictionary lives in the clustered feature space: the projection (dim) or the backbone (C')
    assert m.build(book).dictionary.shape[1] == 16
    assert m.build(public).dictionary.shape[1] == m.build(public).visual.backbone_channels
    assert book.mix_weight > 0 and public.mix_weight == 0  # the public code's audio classifier sees single sounds only
    assert m.training_version(public) == 2 and m.training_version(book) == m.version  # public stage 1 trains as before
    for bad in ({"avc_loss": "mse"}, {"region_rule": "otsu"}, {"cluster_features": "audio"}, {"avc_tau": 0.0}, {"mix_weight": -1.0}):
        with pytest.raises(ValueError):
            replace(book, **bad)


def test_stage_one_infonce_is_the_max_mil_contrastive_loss():
    from avgn.losses import maxmil_contrastive_loss
    from avgn.methods.dsol import stage1_loss

    m = get_method("dsol")
    model = m.build(DSOLConfig(num_classes=3, dim=8, avc_tau=0.2, encoder=EncoderConfig(audio_width=0.125)))
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    v = torch.nn.functional.normalize(torch.randn(4, 8, 3, 3), dim=1)
    out = {"audio_emb": a, "visual_map_feats": v, "av_map": torch.rand(4, 3, 3)}
    total, parts = stage1_loss(model, out)
    expect, _ = maxmil_contrastive_loss(a, v, 0.2)
    assert total.item() == pytest.approx(expect.item(), rel=1e-6) and parts["avc"].item() == pytest.approx(expect.item(), rel=1e-6)
    # the public BCE form: chance (every map value 1/2) costs 2 ln 2
    public = m.build(DSOLConfig(num_classes=3, dim=8, avc_loss="bce", map_scale_init=0.0, encoder=EncoderConfig(audio_width=0.125)))
    _, p = stage1_loss(public, dict(out, av_map=torch.full((4, 3, 3), 0.5)))
    assert p["avc"].item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_mix_with_previous_adds_the_magnitudes():
    from avgn.methods.dsol import mix_with_next

    spec = torch.log(torch.tensor([1.0, 2.0, 5.0])).reshape(3, 1, 1, 1)
    assert mix_with_next(spec, 0.0).exp().flatten().tolist() == pytest.approx([1 + 5, 2 + 1, 5 + 2])
    torch.manual_seed(0)
    mixed = mix_with_next(spec, 6.0).exp().flatten()
    gains = (mixed - spec.exp().flatten()) / spec.roll(1, 0).exp().flatten()  # the second sound's linear gain
    assert ((gains >= 10 ** (-6 / 20) - 1e-6) & (gains <= 10 ** (6 / 20) + 1e-6)).all() and not torch.allclose(gains, torch.ones(3))


def test_stage_one_mixture_loss_is_half_each_cluster():
    """With a dictionary, training stage 1 scores the audio head on each item's sound mixed with the
    previous item's against half of each one's cluster; evaluation and mix_weight=0 do not mix."""
    from avgn.methods.dsol import stage1_loss

    m = get_method("dsol")
    cfg = DSOLConfig(num_classes=3, num_clusters=3, dim=8, encoder=EncoderConfig(audio_width=0.125))
    model = m.build(cfg)
    model.set_dictionary(torch.eye(3, 8))
    torch.manual_seed(0)
    kw = {"spec": torch.randn(4, 1, 64, 32), "visual_feats": torch.randn(4, model.visual.backbone_channels, 3, 3)}
    model.train()
    out = model(**kw)
    assert out["mix_cluster_logits"].shape == (4, 3)
    total, parts = stage1_loss(model, out)
    from avgn.clusters import masked_object_features
    from avgn.methods.dsol import object_region_maps

    obj = masked_object_features(out["cluster_feats"].float(), object_region_maps(out["av_map"].float(), "relative"), cfg.region_cut, cfg.dilate)
    pseudo = (torch.nn.functional.normalize(obj.feats, dim=1) @ torch.nn.functional.normalize(model.dictionary, dim=1).t()).argmax(1)
    logp = torch.log_softmax(out["mix_cluster_logits"].float(), 1)
    expect = -(0.5 * (logp.gather(1, pseudo[:, None]) + logp.gather(1, pseudo.roll(1)[:, None]))).mean()
    assert parts["mix_cls"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert total.item() == pytest.approx((parts["avc"] + parts["pseudo_cls"] + parts["mix_cls"]).item(), rel=1e-5)
    model.eval()
    assert "mix_cluster_logits" not in model(**kw)
    off = m.build(DSOLConfig(num_classes=3, num_clusters=3, dim=8, mix_weight=0.0, encoder=EncoderConfig(audio_width=0.125)))
    off.set_dictionary(torch.eye(3, 8))
    off.train()
    assert "mix_cls" not in stage1_loss(off, off(**kw))[1]
