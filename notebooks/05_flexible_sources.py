# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. A flexible number of sources
#
# AVGN's selling point is that it localizes "a flexible number of sources": one class token per
# class, so a mixture of three or four sounds needs no retraining, whereas Mix-and-Localize has a
# fixed number of audio slots (K = 2 here) and EZ-VSL a single map. Every model of chapter 3 was
# trained on mixtures of **at most two** sources. This chapter tests them on 1, 2, 3 and 4 sources:
#
# * **scenes**: all sounding objects in one 224 x 224 frame, with silent distractors
#   (`test/{solo,duet,trio,quartet}/scene`, built in chapter 1);
# * **concatenated frames**: one object per frame, n frames side by side (`test/duet/concat` is
#   built; the trios and quartets of frames, `test/{trio,quartet}/concat`, are composed
#   deterministically from the test split's solo scenes by `avgn.evaluate.composed_concat_set`,
#   as many as the built trio and quartet scenes: 200 each on the `cpu` profile).
#
# It then asks how well AVGN hears *which* classes sound (presence precision / recall / F1 and
# source counting), whether visible but silent objects fool it, and how every method fares under
# three domain shifts.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
# the folder that holds data/ (the benchmark, the runs read from the store), figures/ and results/ (".." is the repository)
workdir = ".."

# %%
import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt

from avgnbook.analysis import class_presence_table, compare_seeds, predict_run, presence_summary, say, sources_curves
from avgnbook.chapter import chapter_context
from avgnbook.findings import versus
from avgn.experiment import METHOD_NAMES, REFERENCES, get_experiment
from avgn.methods import get_method
from avgnbook.results import with_set_parts
from avgn.runs import load_run
from avgnbook.variants import DSOL_VARIANT, MAIN_VARIANTS, NEGATIVES_VARIANT, TVSL_VARIANTS

ctx = chapter_context("05", profile, seed, device, workdir)
data, runs, seeds = ctx.data, ctx.runs, ctx.seeds
K = get_experiment("mal", profile).model.num_sources
print(f"Mix-and-Localize slots K = {K}")

# %% [markdown]
# ## Evaluating the trained models on more sources
#
# The runs are chapter 3's (read from the run store). Besides the test split's
# own sets, each run is scored on the composed trios and quartets of frames (`eval_composed.*`) and
# on the three domain-shift splits (`eval_test_style.*`, `eval_test_audio.*`, `eval_test_real.*`).

# %%
COMPOSED = {"composed": ["test/trio/concat", "test/quartet/concat"]}
SHIFTS = ["test_style", "test_audio", "test_real"]
ctx.run_variants(MAIN_VARIANTS, eval_splits=("test", *SHIFTS), eval_sets=COMPOSED)

# %% [markdown]
# The non-learned references go through the same evaluation: the centre and object priors, and the
# **perfect map** (each source's ground-truth mask scored as its map), the protocol's ceiling.

# %%
ctx.run_references(eval_sets=COMPOSED)
res = ctx.write(pd.concat([ctx.collect(MAIN_VARIANTS, split=t) for t in ("test", "composed")], ignore_index=True), "05_sources")
rows = pd.concat([ctx.collect(MAIN_VARIANTS, split=t, samples=True) for t in ("test", "composed")], ignore_index=True)

# %% [markdown]
# ## Localization against the number of sources
#
# The label-free score leads: semantic AP (chapter 0) charges a class selected that does not sound,
# which CAP does not. CAP, PIAP and CIoU@0.3 are mixture metrics; for one source they reduce to the AP of its map and
# the share of sources whose cIoU reaches 0.3, computed here from the per-source rows so that the
# n = 1 point is on the same scale. AVGN is shown with oracle and with predicted source selection;
# the class-agnostic methods give the same numbers in both modes. Mix-and-Localize has K = 2 slots:
# with three or four sources the unmatched sources score 0 (its CAP is moreover an oracle-matched
# number: chapter 3). The concatenated layout starts at two frames (one source is the single-frame
# scene of the top row).

# %%
NSRC = {"solo": 1, "duet": 2, "trio": 3, "quartet": 4}
selecting = [v.label for v in MAIN_VARIANTS if "predicted" in get_method(v.method).modes]  # one line per mode
curves = sources_curves(res, rows, selecting, metrics=("semantic_ap", "cap", "piap", "ciou@0.3"))
curves.to_csv(runs / profile / "sources_curves.csv", index=False)
order = [m for m in ["AVGN · oracle", "AVGN · predicted", "AVGN (public-code target) · oracle", "AVGN (public-code target) · predicted",
                     "EZ-VSL", "EZ-VSL + object prior", "Mix-and-Localize", *[METHOD_NAMES[k] for k in REFERENCES]]
         if m in set(curves["method"])]
# the figure shows CAP and PIAP; CIoU@0.3 under the protocol's top-half binarisation is in the table
# below (its range is printed: near zero it would be ten lines on top of each other)
ciou = curves[curves["metric"] == "ciou@0.3"]["value"]
print(f"CIoU@0.3 over every method, layout and number of sources: {ciou.min():.3f} to {ciou.max():.3f}")
grid = sns.relplot(data=curves[curves["metric"] != "ciou@0.3"], x="n_sources", y="value", hue="method", hue_order=order, col="metric",
                   row="layout", col_order=["semantic_ap", "cap", "piap"], row_order=["scene", "concat"], kind="line", marker="o",
                   errorbar="sd", height=3.0, aspect=1.15, facet_kws={"sharey": False})
grid.set(xticks=[1, 2, 3, 4])
grid.set_axis_labels("sounding sources in the mixture", "score (test)")
grid.set_titles("{row_name}: {col_name}")
for ax in grid.axes.flat:
    ax.axvspan(2.5, 4.5, color="0.92", zorder=0)
ctx.save_figure(grid.figure, "05_sources")
plt.close(grid.figure)

# %% [markdown]
# ```{figure} ../figures/05_sources.png
# :label: fig-sources
# :alt: CAP and PIAP against the number of sources for every method
# Localization against the number of sounding sources (top: objects in one frame with silent
# distractors; bottom: frames side by side). The grey band marks source counts never seen in
# training. Lines are means over training seeds, bands one standard deviation.
# ```

# %%
tab = curves.groupby(["layout", "method", "n_sources", "metric"])["value"].mean().unstack(["n_sources"]).round(3)
tab.loc[(slice(None), order, ["semantic_ap", "cap"]), :]

# %% [markdown]
# ## Which classes sound: presence and counting
#
# With predicted selection AVGN decides which classes sound from its audio presence probabilities
# (threshold chosen on the validation split by presence F1 and stored with the run; at least one
# class). Precision, recall and F1 of that decision over all (scene, class)
# pairs, and how often the number of predicted classes equals the number of sources:

# %%
pres = res[res["variant"].isin(selecting) & (res["mode"] == "predicted")
           & res["metric"].isin(["presence_precision", "presence_recall", "presence_f1", "count_acc"])].copy()
pres["n_sources"] = pres["set"].str.split("/").str[1].map(NSRC)
pres["layout"] = pres["set"].str.split("/").str[2]
grid = sns.relplot(data=pres, x="n_sources", y="value", hue="metric", style="layout", col="variant", kind="line", marker="o",
                   errorbar="sd", height=3.2, aspect=1.2)
grid.set(xticks=[1, 2, 3, 4], ylim=(0, 1.02))
grid.set_axis_labels("sounding sources in the mixture", "")
grid.set_titles("{col_name}")
ctx.save_figure(grid.figure, "05_presence")
plt.close(grid.figure)
pres.groupby(["variant", "layout", "n_sources", "metric"])["value"].agg(["mean", "std"]).unstack("metric").round(3)

# %% [markdown]
# ```{figure} ../figures/05_presence.png
# :label: fig-presence
# :alt: Presence precision, recall, F1 and count accuracy against the number of sources
# AVGN's presence decision (predicted source selection) against the number of sounding sources.
# ```

# %% [markdown]
# ## Silent distractors
#
# Scenes contain pasted objects of other classes that make no sound. For every (scene, class) pair
# of AVGN's seed-0 predictions on the scene sets, the class is **sounding**, a **distractor**
# (visible, silent) or **absent**. "Gets a map" means predicted selection selects the class; the
# map peak is the maximum cosine similarity of the class's map.

# %%
scene_sets = [f"test/{t}/scene" for t in NSRC]
avgn_run = ctx.run_dir(MAIN_VARIANTS[0])
preds = predict_run(avgn_run, scene_sets, device=device)
class_names = load_run(avgn_run)["config"]["class_names"]
roles = pd.concat([class_presence_table(p, data, class_names) for p in preds.values()], ignore_index=True)
summ = presence_summary(roles)
summ.pivot_table(index=["set", "n_sources"], columns="role", values="share_selected").reindex(columns=["sounding", "distractor", "absent"]).round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
sns.boxplot(data=roles, x="n_sources", y="map_peak", hue="role", hue_order=["sounding", "distractor", "absent"], ax=axes[0], fliersize=1)
axes[0].set(xlabel="sounding sources", ylabel="peak of the class's map (cosine)", title="map confidence by role")
sns.barplot(data=roles, x="n_sources", y="selected", hue="role", hue_order=["sounding", "distractor", "absent"], ax=axes[1], errorbar=None)
axes[1].set(xlabel="sounding sources", ylabel="share given a map (predicted selection)", title="selected as sounding", ylim=(0, 1))
ctx.save_figure(fig, "05_distractors")
plt.close(fig)

# %% [markdown]
# ```{figure} ../figures/05_distractors.png
# :label: fig-distractors
# :alt: Map peaks and selection rates of sounding, distractor and absent classes
# Left: the peak of each class's map, by whether the class sounds, is a visible silent distractor,
# or is absent. Right: how often predicted selection gives the class a map. A model that "hears what
# it sees" would select distractors more often than absent classes.
# ```

# %%
d = roles[roles["role"] != "sounding"].groupby("role")[["selected", "map_peak"]].mean()
print(f"distractor selected: {d.loc['distractor', 'selected']:.3f} vs absent class: {d.loc['absent', 'selected']:.3f}; "
      f"mean map peak: distractor {d.loc['distractor', 'map_peak']:.3f} vs absent {d.loc['absent', 'map_peak']:.3f} "
      f"vs sounding {roles.loc[roles['role'] == 'sounding', 'map_peak'].mean():.3f}")

# %% [markdown]
# ## Domain shift
#
# Three held-out test splits from chapter 1: **test_style** (every object drawn in an icon style never
# seen in training: Twemoji), **test_audio** (every sound rendered with a soundfont never heard in
# training: MuseScore General), **test_real** (only real recordings and photographs). Scores relative
# to the in-domain test split:

# %%
shift = pd.concat([ctx.collect(MAIN_VARIANTS, references=(), split=sp) for sp in ["test", *SHIFTS]], ignore_index=True)
shift = with_set_parts(ctx.write(shift, "05_domain_shift"))
key = shift[(shift["mode"] == "oracle") & (((shift["task"] == "solo") & (shift["metric"] == "ap"))
                                          | ((shift["task"] == "duet") & (shift["metric"] == "cap")))]
key = key.assign(what=key["task"] + "/" + key["layout"] + " " + key["metric"])
table = key.groupby(["variant", "what", "split"])["value"].mean().unstack("split")[["test", *SHIFTS]]
display((100 * table).round(1))
rel = key.merge(key[key["split"] == "test"].groupby(["variant", "what"])["value"].mean().rename("in_domain").reset_index(), on=["variant", "what"])
rel = rel[rel["split"] != "test"].assign(change=lambda d: d["value"] - d["in_domain"])
grid = sns.catplot(data=rel, x="split", y="change", hue="variant", hue_order=[v.label for v in MAIN_VARIANTS], col="what",
                   kind="bar", errorbar="sd", height=3.2, aspect=1.05)
grid.set_axis_labels("", "change against in-domain test")
grid.set_titles("{col_name}")
for ax in grid.axes.flat:
    ax.axhline(0, color="0.3", lw=0.8)
ctx.save_figure(grid.figure, "05_domain_shift")
plt.close(grid.figure)

# %% [markdown]
# ```{figure} ../figures/05_domain_shift.png
# :label: fig-domain-shift
# :alt: Change in AP and CAP under three domain shifts, per method
# Change of the single-source AP and the duet CAP (oracle selection) on the three shifted test
# splits against the in-domain test split; bars are means over training seeds, whiskers one
# standard deviation.
# ```


# %% [markdown]
# ## Negative audio: silence, noise, a sound from off screen
#
# The field's current critique of sound localization is that models light up the salient object
# whatever the audio says. Every test solo and duet frame is scored again with its audio replaced
# (`avgn.data.negatives`, deterministic per set): **silence** (digital zeros), the build's **noise**
# alone at the level it has in the frame's own mix, and an **off-screen** clip of a class that is not
# in the frame. The **false-alarm rate** is the share of frames where the method reports a source
# under silence or noise, or a *visible* class under off-screen audio. AVGN, DSOL and T-VSL report the
# classes their audio presence selects (each its threshold from validation; the selection may be
# empty; DSOL's presence is a softmax over its clusters, so some class always carries weight); the
# class-agnostic methods report a source when the peak of their map passes a threshold chosen on
# validation own-audio against negative-audio frames (`avgn.evaluate`, its negative-audio section), and when no threshold
# separates them their false-alarm rate is 1. **Visible AP** is the AP of the map shown against the
# visible sounding objects under each condition, next to the same frames with their own audio: a map
# that does not depend on the audio loses nothing.

# %%
import json  # noqa: E402

from avgnbook.plan import NEGATIVE_SETS  # noqa: E402

NEG = {"negative": list(NEGATIVE_SETS)}
NEG_VARIANTS = [*MAIN_VARIANTS, DSOL_VARIANT, TVSL_VARIANTS[0], NEGATIVES_VARIANT]
ctx.run_variants(NEG_VARIANTS, eval_sets=NEG, verbose=False)
ctx.run_references(eval_sets=NEG, verbose=False)
neg = with_set_parts(ctx.write(ctx.collect(NEG_VARIANTS, split="negative"), "05_negative", fractions=False))  # drops may be < 0
neg = neg[neg["mode"] == "predicted"].rename(columns={"layout": "condition"})
fa = neg[neg["metric"] == "false_alarm"].pivot_table(index="variant", columns=["task", "condition"], values="value", aggfunc="mean")
display(fa.round(3))
payloads = [json.loads((ctx.eval_dir(v, s) / "eval_negative.json").read_text()) for v in NEG_VARIANTS for s in seeds]
for note in sorted({p.get("detection", {}).get("note") for p in payloads} - {None}):
    print(note)

# %%
WORD = {"false_alarm": "false-alarm rate (lower is better)", "visible_ap_drop": "visible AP, own audio minus negative audio"}
plot = neg[neg["metric"].isin(list(WORD))].assign(metric=lambda d: d["metric"].map(WORD))
grid = sns.catplot(data=plot, x="condition", y="value", hue="variant", col="metric", row="task", kind="bar", errorbar="sd",
                   height=3.0, aspect=1.4, sharey=False)
grid.set_titles("{col_name} — {row_name} frames", size=9)
grid.set_axis_labels("audio the frame is shown with", "value")
ctx.save_figure(grid.figure, "05_negative_audio")
plt.close(grid.figure)

# %% [markdown]
# ```{figure} ../figures/05_negative_audio.png
# :label: fig-negative-audio
# :alt: False-alarm rate and visible-AP drop of every method under silence, noise and off-screen audio
# Negative audio, per method, on solo and duet frames: how often a source (or a visible class) is
# reported, and how much the map shown loses on the visible objects against the same frames with
# their own audio; bars are means over seeds, whiskers one standard deviation.
# ```

# %% [markdown]
# ### Does training on negative audio teach AVGN to say "nothing"?
#
# `avgn-negatives` is AVGN trained with a fifth of its items on silence or on their noise alone, with
# no sounding label (`train.negative_items`). Its false alarms under silence and noise against
# AVGN's, and what it costs on the test duets with their own audio (oracle CAP, the target: at most
# one point):

# %%
test = ctx.collect([v for v in MAIN_VARIANTS if v.method == "avgn"][:1] + [NEGATIVES_VARIANT], references=(), split="test")
both = pd.concat([neg.rename(columns={"condition": "layout"}), test], ignore_index=True)
neg_cmp = {}
for set_name, metric, mode in (("test/solo/silence", "false_alarm", "predicted"), ("test/solo/noise", "false_alarm", "predicted"),
                               ("test/duet/offscreen", "false_alarm", "predicted"), ("test/duet/scene", "cap", "oracle"),
                               ("test/duet/concat", "cap", "oracle")):
    neg_cmp[set_name, metric] = c = compare_seeds(both, NEGATIVES_VARIANT.label, "AVGN", set_name, metric, mode_a=mode, mode_b=mode)
    print(f"{set_name} {metric} ({mode}): trained on negative audio {say(c)}")

# %% [markdown]
# ## What this chapter found

# %%
at4 = lambda m: tab.loc[("scene", m, "cap"), 4]  # noqa: E731  (mean CAP, four sources in one frame)
refs4 = " and ".join(f"the {METHOD_NAMES[k]}'s {100 * at4(METHOD_NAMES[k]):.1f}" for k in ("centre", "object"))
count = pres[(pres["variant"] == "AVGN") & (pres["metric"] == "count_acc") & (pres["layout"] == "scene")].groupby("n_sources")["value"].mean()
drops = (100 * table.loc["AVGN"][SHIFTS].sub(table.loc["AVGN"]["test"], axis=0))
worst = drops.stack().idxmin()
fa_avgn = fa.loc["AVGN"]
agnostic = fa.loc[[v.label for v in NEG_VARIANTS if get_method(v.method).kind != "class_aware"]]
neighbours = fa.loc[[v.label for v in NEG_VARIANTS if get_method(v.method).kind == "class_aware" and v.method != "avgn"]]
ctx.findings([
    f"With four sounding objects in one frame (never seen in training) AVGN's CAP is {100 * at4('AVGN · oracle'):.1f} with the ground-truth "
    f"classes and {100 * at4('AVGN · predicted'):.1f} with its own selection (semantic AP, which charges its false selections, "
    f"{100 * tab.loc[('scene', 'AVGN · predicted', 'semantic_ap'), 4]:.1f}), against {refs4}.",
    "AVGN counts the sounding classes of a scene right in " + ", ".join(f"{v:.0%} of the {n}-source frames" for n, v in count.items()) + ".",
    f"Its own selection gives a visible silent distractor a map in {d.loc['distractor', 'selected']:.0%} of the cases and an absent class in "
    f"{d.loc['absent', 'selected']:.0%}: it {'hears what it sees' if d.loc['distractor', 'selected'] > 2 * d.loc['absent', 'selected'] else 'does not select what it merely sees'}.",
    f"Its largest loss under domain shift is {worst[1]} on {worst[0]}: {drops.loc[worst]:+.1f} points against the in-domain test split (oracle selection).",
    f"Under negative audio AVGN reports a source on {fa_avgn[('solo', 'silence')]:.0%} of silent and {fa_avgn[('solo', 'noise')]:.0%} of noise-only solo frames "
    f"and a visible class on {fa_avgn[('duet', 'offscreen')]:.0%} of duet frames with an off-screen sound; the class-agnostic methods' false-alarm rates "
    f"under silence range {agnostic[('solo', 'silence')].min():.0%}-{agnostic[('solo', 'silence')].max():.0%}.",
    "Of the other class-aware methods, selecting from their own audio: " + "; ".join(
        f"{lab} reports a source on {r[('solo', 'silence')]:.0%} of silent and {r[('solo', 'noise')]:.0%} of noise-only solo frames"
        for lab, r in neighbours.iterrows()) + ".",
    f"AVGN trained on negative audio: its false alarms under noise on solo frames are {versus(neg_cmp['test/solo/noise', 'false_alarm'])}, "
    f"and its duet-scene oracle CAP is {versus(neg_cmp['test/duet/scene', 'cap'])}.",
])

# %% [markdown]
# ## The runs this chapter read
#
# Every number above comes from these stored runs (`store/`, `avgn runs status`), read on the code
# revision printed here.

# %%
ctx.runs_table()
