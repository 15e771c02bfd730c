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
# # 6. Looking inside: tokens, embeddings, maps
#
# The pictures that make (or break) the case for class-aware grouping, all drawn from the runs of
# chapter 3 (read from the run store):
#
# 1. how the learned class tokens become recognisable during training (the paper's Figure 5);
# 2. t-SNE of the class-aware audio and visual embeddings;
# 3. a qualitative grid of maps for AVGN and the baselines on the same test scenes, good cases and
#    failures alike (the paper's Figure 6);
# 4. an interactive explorer to listen to a mixture and its sources, overlay any class's map and
#    move the binarisation threshold.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
# the folder that holds data/ (the benchmark, the runs read from the store), figures/ and results/ (".." is the repository)
workdir = ".."
tsne_items = 150  # scenes per test set in the t-SNE
explorer_items_n = 4  # scenes in the explorer

# %%
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt
from sklearn.manifold import TSNE

from avgnbook.analysis import class_embeddings, embedding_dependence
from avgnbook.chapter import chapter_context
from avgn.evaluate import example_maps
from avgnbook.explorer import Explorer, explorer_items
from avgn.segment.segmenters import GrabCutSegmenter
from avgn.runs import load_run, load_trained_model
from avgnbook.variants import MAIN_VARIANTS
from avgn.viz import MAP_CMAP, qualitative_grid

ctx = chapter_context("06", profile, seed, device, workdir)
data, runs, seeds = ctx.data, ctx.runs, ctx.seeds
variants = {v.label: v for v in MAIN_VARIANTS}
ctx.run_variants(MAIN_VARIANTS, verbose=False)  # chapter 3's runs, reused
print("runs:", {v.label: str(ctx.run_dir(v)) for v in MAIN_VARIANTS})

# %% [markdown]
# ## Class tokens across training (the paper's Figure 5)
#
# After every epoch the trainer applied the token classifier to the class-aware audio embedding
# $g^a_c$ of every sounding source of the validation sets and logged the macro precision, recall and
# F1 of its answers (`history.json` of each run). One line per training seed.

# %%
frames = []
for s in seeds:
    run = load_run(ctx.run_dir(variants["AVGN"], s))
    hist = run["history"]
    val_sets = run["config"]["experiment"]["inputs"]["val_sets"]
    for m in ("precision", "recall", "f1"):
        cols = [f"val/{vs}/predicted/token_{m}" for vs in val_sets if f"val/{vs}/predicted/token_{m}" in hist]
        frames.append(pd.DataFrame({"epoch": hist["epoch"], "metric": m, "seed": s, "value": hist[cols].mean(axis=1)}))
tok = pd.concat(frames, ignore_index=True)
fig, ax = plt.subplots(figsize=(6.5, 3.8))
sns.lineplot(data=tok, x="epoch", y="value", hue="metric", units="seed", estimator=None, marker="o", ax=ax, alpha=0.85)
ax.set(ylim=(0, 1.02), xlabel="epoch", ylabel="token classification (val, macro)", title="AVGN class tokens during training")
ax.set_xticks(sorted(tok["epoch"].unique()))
ctx.save_figure(fig, "06_token_prf")
plt.close(fig)
tok.groupby(["epoch", "metric"])["value"].agg(["mean", "std"]).unstack("metric").round(3)

# %% [markdown]
# ```{figure} ../figures/06_token_prf.png
# :label: fig-token-epochs
# :alt: Token classification precision, recall and F1 per epoch, one line per seed
# Precision, recall and F1 of the token classifier on the class-aware audio embeddings of the
# validation sources, per epoch; one line per training seed.
# ```

# %% [markdown]
# ## t-SNE of the class-aware embeddings
#
# For every sounding source of the first `tsne_items` scenes of the single-source and duet test
# sets, the audio embedding $g^a_c$ and the visual embedding $g^v_c$ of its class $c$ (seed-0 AVGN),
# projected to 2-D by t-SNE (scikit-learn, cosine metric, fixed seed). Embeddings that group into
# one cluster per class mean the grouping produced class-specific features; note that t-SNE keeps
# neighbourhoods, not distances between clusters.

# %%
avgn_run = ctx.run_dir(variants["AVGN"])
ga, gv, labels, class_names = class_embeddings(avgn_run, ["test/solo/scene", "test/duet/scene"], device=device, max_items=tsne_items)
present = sorted(set(labels.tolist()))
palette = dict(zip([class_names[c] for c in present], sns.color_palette("husl", len(present))))
fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
for ax, (name, emb) in zip(axes, (("audio $g^a_c$", ga), ("visual $g^v_c$", gv))):
    perplexity = float(min(30, max(2, (len(emb) - 1) // 3)))
    xy = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(emb)
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "class": [class_names[c] for c in labels]})
    sns.scatterplot(data=df, x="x", y="y", hue="class", palette=palette, s=14, ax=ax, legend=ax is axes[-1], linewidth=0)
    ax.set(title=f"class-aware {name} ({len(emb)} sources)", xlabel="", ylabel="", xticks=[], yticks=[])
axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, ncols=1, title="class")
fig.tight_layout()
ctx.save_figure(fig, "06_tsne")
plt.close(fig)

# %% [markdown]
# ```{figure} ../figures/06_tsne.png
# :label: fig-tsne
# :alt: t-SNE of AVGN's class-aware audio and visual embeddings coloured by class
# t-SNE of the class-aware audio (left) and visual (right) embeddings of the test sources, coloured
# by the source's class.
# ```

# %%
def knn_purity(emb: np.ndarray, lab: np.ndarray, k: int = 5) -> float:
    """Share of each point's k nearest neighbours (cosine) with the same class: a number behind the picture."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    return float((lab[nn] == lab[:, None]).mean())


chance = float(sum((labels == c).mean() ** 2 for c in present))
print(f"5-NN class purity: audio {knn_purity(ga, labels):.3f}, visual {knn_purity(gv, labels):.3f} (chance about {chance:.3f})")

# %% [markdown]
# Tight clusters alone do not show that the embeddings carry information about the *input*: a class
# embedding that stayed close to its class token whatever the scene would cluster perfectly too. The
# control below compares, per class, the mean embedding over scenes where the class sounds with the
# mean over scenes where it does not (`cos_sounding_vs_silent`; 1 = the embedding does not change
# when its class sounds), and how close single embeddings stay to their class mean
# (`within_class_cos`; 1 = the same vector for every input). Values near 1 mean the t-SNE clusters
# above show the class tokens, not what the model heard or saw; the maps of such a model are then
# class-conditional visual detectors (the visual features gated by a nearly constant class vector),
# and its presence heads, which read these embeddings, cannot tell which classes sound — compare the
# presence F1 of chapters 3 and 5.

# %%
ga_all, gv_all, sounding, _ = class_embeddings(avgn_run, ["test/solo/scene", "test/duet/scene"], device=device,
                                               max_items=tsne_items, all_classes=True)
dep = pd.concat({"audio": embedding_dependence(ga_all, sounding, class_names), "visual": embedding_dependence(gv_all, sounding, class_names)},
                names=["modality"]).reset_index(level=0)
summary = dep.groupby("modality")[["cos_sounding_vs_silent", "within_class_cos"]].agg(["mean", "min"]).round(3)
display(summary)
print("mean cos(sounding, silent) per modality: " + ", ".join(f"{m} {v:.3f}" for m, v in dep.groupby("modality")["cos_sounding_vs_silent"].mean().items()))

# %% [markdown]
# ## The same scenes, every method (the paper's Figure 6)
#
# Up to six duet scenes of the test split: the two where seed-0 AVGN's mean AP is highest, two around its
# median and its two worst (failures included on purpose). Each row is one sounding source; each
# map is min-max normalised (colour map `jet`: blue = lowest similarity in the frame, red = highest;
# the white outline is the source's ground-truth mask). AVGN uses the map of the source's class
# (oracle selection), EZ-VSL its single map, Mix-and-Localize the slot matched to the source.

# %%
set_name = "test/duet/scene"
rows = ctx.collect([variants["AVGN"]], references=(), seeds=[seeds[0]], samples=True)
per_scene = rows[(rows["set"] == set_name) & (rows["mode"] == "oracle")].groupby("scene_id", sort=False)["ap"].mean()
order = per_scene.sort_values(ascending=False)
mid = len(order) // 2
picks = [(sid, "best") for sid in order.index[:2]] + [(sid, "median") for sid in order.index[max(0, mid - 1): mid + 1]]
picks += [(sid, "worst") for sid in order.index[-2:]]
first_tag: dict[str, str] = {}
for sid, tag in picks:  # a small set can pick a scene twice: keep its first tag
    first_tag.setdefault(sid, tag)
chosen, tags = list(first_tag), list(first_tag.values())
scene_index = {sid: i for i, sid in enumerate(per_scene.index)}  # the evaluation's order = the set's order
indices = [scene_index[sid] for sid in chosen]
methods = {"AVGN": "AVGN", "EZ-VSL": "EZ-VSL", "MaL": "Mix-and-Localize"}
per_method = {}
for short, label in methods.items():
    model, exp, _ = load_trained_model(ctx.run_dir(variants[label]), device=device)
    per_method[short] = example_maps(model, exp, data, set_name, indices, device=device)
samples = []
for j, base in enumerate(per_method["AVGN"]):
    assert base["scene_id"] == chosen[j] and all(per_method[m][j]["scene_id"] == base["scene_id"] for m in methods)
    samples.append({"image": base["image"], "masks": base["masks"], "class_names": base["class_names"], "label": f"[{tags[j]}]",
                    "maps": {m: per_method[m][j]["maps"] for m in methods}, "ap": {m: per_method[m][j]["ap"] for m in methods}})
fig = qualitative_grid(samples, list(methods), title=f"{set_name}: maps per source (seed {seeds[0]})")
ctx.save_figure(fig, "06_qualitative")
plt.close(fig)

# %% [markdown]
# ```{figure} ../figures/06_qualitative.png
# :label: fig-qualitative
# :alt: Grid of test scenes with each method's map for each sounding source
# Each row: one sounding source of a test duet scene (its outline colour in the first column),
# then the map each method gives it with that source's AP. Rows are grouped by how well AVGN did
# on the scene (best, median, worst). Colour map: `jet` on the min-max normalised map.
# ```

# %% [markdown]
# ## Interactive explorer
#
# `avgnbook.explorer.Explorer` puts a few test scenes behind widgets: pick the scene and the method,
# listen to the mixture and to each source as mixed, overlay the map of **any** class (AVGN has one
# per class token, so the map of a silent or absent class can be inspected too), move the threshold
# and see the binarised mask and its cIoU against the matched source; the `segment` toggle replaces the
# binarised map by a mask of GrabCut prompted at the map's peak (chapter 8; GrabCut stands in for
# Segment Anything, whose weights are not available here). The book is static, so below
# is a still of the explorer's state; to use it live, open this notebook in JupyterLab
# (`jupyter lab notebooks/06_visualizations.py`, which jupytext opens as a notebook) and run it: the
# last cell shows the widgets. `tests/test_explorer.py` drives the same callbacks headlessly.

# %%
ex_runs = {label: ctx.run_dir(variants[label]) for label in ("AVGN", "EZ-VSL", "Mix-and-Localize")}
items = explorer_items(ex_runs, set_name, indices[: max(1, explorer_items_n)], data_dir=data, device=device)
ex = Explorer(items, segmenter=GrabCutSegmenter())  # the `segment` toggle: chapter 8's GrabCut masks
print({k: ex.state[k] for k in ("scene_id", "method", "map_name", "source", "threshold", "ciou")})
fig = ex.render_still()
_ = ctx.save_figure(fig, "06_explorer_still")

# %% [markdown]
# ```{figure} ../figures/06_explorer_still.png
# :label: fig-explorer
# :alt: The explorer's still: frame with outlines, the selected map with its binarised mask, the colour bar
# A still of the explorer (first scene, AVGN, the map of the first source's class, median rule).
# The colour bar gives the map's values and marks the binarisation threshold.
# ```

# %%
ex.widget()


# %% [markdown]
# ## What this chapter found
#
# The numbers behind the pictures above, written to `results/06_embeddings.csv` and read back.

# %%
run_id = lambda s: ctx.read[ctx.key(variants["AVGN"], s)][1]  # noqa: E731
last_tok = tok[tok["epoch"] == tok["epoch"].max()]
emb_rows = [{"seed": s, "set": "val/solo+duet/scene", "metric": f"token_{m}", "value": v} for (s, m), v in last_tok.groupby(["seed", "metric"])["value"].mean().items()]
emb_rows += [{"seed": seeds[0], "set": "test/solo+duet/scene", "metric": k, "value": v} for k, v in (
    ("knn_purity_audio", knn_purity(ga, labels)), ("knn_purity_visual", knn_purity(gv, labels)), ("knn_purity_chance", chance),
    *((f"cos_sounding_vs_silent_{m}", x) for m, x in dep.groupby("modality")["cos_sounding_vs_silent"].mean().items()))]
emb = pd.DataFrame(emb_rows).assign(variant="AVGN", method="avgn", mode="oracle", run=lambda d: d["seed"].map(run_id))
emb = ctx.write(emb, "06_embeddings", fractions=False).set_index(["seed", "metric"])["value"]
s0, TOKEN_F1 = seeds[0], "token_f1"
ctx.findings([
    f"AVGN's class tokens classify the validation mixtures with macro F1 "
    f"{'/'.join(f'{emb[s, TOKEN_F1]:.3f}' for s in seeds)} at the last epoch (seeds {'/'.join(map(str, seeds))}).",
    f"Its class-aware embeddings group by class: 5-nearest-neighbour class purity {emb[s0, 'knn_purity_audio']:.3f} (audio) and "
    f"{emb[s0, 'knn_purity_visual']:.3f} (visual) against {emb[s0, 'knn_purity_chance']:.3f} by chance (seed {s0}).",
    f"Cosine between a class's mean embedding when it sounds and when it is silent: {emb[s0, 'cos_sounding_vs_silent_audio']:.3f} (audio), "
    f"{emb[s0, 'cos_sounding_vs_silent_visual']:.3f} (visual; 1 = no change): the audio embedding "
    f"{'follows' if emb[s0, 'cos_sounding_vs_silent_audio'] < 0.9 else 'barely follows'} the sound; the visual one "
    + ("barely changes, so the oracle maps are mostly class detectors and the audio decides which class is selected."
       if emb[s0, "cos_sounding_vs_silent_visual"] > 0.9 else "follows it too."),
])

# %% [markdown]
# ## The runs this chapter read
#
# Every number above comes from these stored runs (`store/`, `avgn runs status`), read on the code
# revision printed here.

# %%
ctx.runs_table()
