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
# # 0. Overview and evaluation protocol
#
# This book re-implements and extends **AVGN** — *Audio-Visual Grouping Network for Sound
# Localization from Mixtures* (Mo & Tian, CVPR 2023) — together with the systems around it: the
# baselines EZ-VSL and Mix-and-Localize, and the neighbours DSOL, GSAVL and T-VSL. Every number and
# figure comes from code in the `avgn` library, executed by the notebook that shows it.
#
# **The task.** Given one video frame and an audio *mixture*, localize every sounding source in the
# frame: one heatmap per source, for a flexible number of sources. AVGN learns one token per class;
# per modality a small transformer mixes the tokens with the features, and a grouping block assigns
# features to tokens, giving one class-aware audio and visual embedding per class. The map of source
# $n$ is the cosine similarity between its class-aware audio embedding and the spatial visual features.
#
# **The chapters.**
#
# | chapter | what it does |
# |---|---|
# | 0. Overview (this page) | the task, the evaluation protocol, the environment |
# | [1. Data preparation](01_data_prep.ipynb) | builds the embedded audio-visual mixture benchmark from real recordings and pictures |
# | [2. Training AVGN](02_train_avgn.ipynb) | one AVGN run from the inside; does it learn from the audio, and what more training buys |
# | [3. Main results](03_main_results.ipynb) | AVGN against EZ-VSL, Mix-and-Localize and non-learned priors, with and without labels at test time |
# | [4. Ablations](04_ablations.ipynb) | depth, assignment, losses, audio width, and how much the protocol decides |
# | [5. Flexible sources](05_flexible_sources.ipynb) | one to four sources, silent distractors, domain shift |
# | [6. Visualisations](06_visualizations.ipynb) | tokens, embeddings, qualitative maps, an interactive explorer |
# | [7. Silent objects](07_silent_objects.ipynb) | DSOL's two-stage class-aware localization against AVGN |
# | [8. Shape-aware masks](08_shape_masks.ipynb) | GSAVL: maps to point prompts to masks |
# | [9. Text as anchors](09_text_anchors.ipynb) | T-VSL's text anchors and zero-shot classes |
#
# **Where the numbers come from.** Every trained model the chapters read is a run of the book's run
# plan (`avgnbook.plan.book_plan`), trained, evaluated and committed in the run store (`store/`);
# a chapter reads its runs from there and ends with their ids and the code revision it ran on. The
# store fills over several sittings (`avgn runs status` says what is left); a chapter whose runs are
# not all stored yet still shows its previous edition.
#
# **Rerunning a chapter.** The sources are the `notebooks/*.py` files (jupytext, `py:percent`);
# `make book` executes them with papermill into `book/` and renders the book. One chapter with another
# profile (`smoke` for seconds, `cpu` — the book's default — or `gpu` for the paper's settings):
#
# ```bash
# jupytext --to ipynb notebooks/00_overview.py -o build/00_overview.ipynb
# cd book && papermill ../build/00_overview.ipynb 00_overview.ipynb -p profile gpu -p device auto
# ```

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
# the folder that holds data/ (the benchmark, the runs read from the store), figures/ and results/ (".." is the repository)
workdir = ".."

# %%
import pandas as pd
import seaborn as sns
import torch
from matplotlib import pyplot as plt

from avgn import metrics
from avgn.config import get_profile
from avgn.env import environment_report, seed_everything
from avgnbook.synthetic import noisy_maps, perfect_map_ciou_vs_area, protocol_sweep, random_box_masks
from avgn.viz import set_style
from avgnbook.chapter import ChapterFigures, ChapterPaths

cfg = get_profile(profile)
seed_everything(seed)
set_style()
paths = ChapterPaths.of(workdir)
figs = ChapterFigures("00", paths.figures)  # writes figures stamped with this chapter and the code revision
pd.DataFrame.from_dict(environment_report(device), orient="index", columns=["value"])

# %% [markdown]
# ## What the book found
#
# **The papers' claims.** One row per claim a chapter tests: the verdict over the cells it is tested
# on — *reproduces* only when every cell is above beyond twice the seeds' standard deviation with at
# least three seeds, *within noise* when no cell is beyond it; otherwise *partly* (some cells above,
# none below), *does not reproduce where beyond noise* (some below, none above) or *mixed*, each with
# the cells counted —, the differences
# per cell (points, mean ± sd over seeds, paired by seed) and the seeds (`results/claims_NN.csv`).
# This page is executed after the chapters (`make book`).

# %%
from IPython.display import Markdown, display  # noqa: E402

from avgn.env import git_revision  # noqa: E402
from avgnbook.findings import claims_table, findings_markdown, read_claims, read_findings  # noqa: E402

with pd.option_context("display.max_colwidth", None):
    display(claims_table(read_claims(paths.results)).set_index(["paper", "claim"]))

# %% [markdown]
# **Each chapter in sentences**, computed from its results (`results/findings_NN.csv`). A chapter
# executed on another code revision than this page, or not yet executed on the current run store,
# is said so in its place.

# %%
TITLES = {"01": "Data preparation", "02": "Training AVGN", "03": "Main results", "04": "Ablations", "05": "Flexible sources",
          "06": "Visualisations", "07": "Silent objects", "08": "Shape-aware masks", "09": "Text as anchors"}
display(Markdown(findings_markdown(read_findings(paths.results), chapters=list(TITLES), titles=TITLES, revision=git_revision())))

# %% [markdown]
# ## The evaluation protocol
#
# The public reference code of this line of work is inconsistent: its "PIAP" calls average precision
# with labels and scores swapped, class-aware AP is not implemented anywhere public, and three
# different binarisation rules are in use. The book uses one protocol, implemented once in
# `avgn.metrics` (exact, batched, CPU or GPU) and tested against scikit-learn.
#
# **Ground truth and predictions.** Each sounding source has a boolean mask at evaluation
# resolution ($224\times224$ per frame). A method predicts one real-valued map per source, upsampled
# bilinearly (`align_corners=False`) to the mask size.
#
# **Pixel average precision.** For a map $s$ and mask $G$, with the pixels ranked by score,
#
# $$
# \mathrm{AP}(s, G) = \frac{1}{|G|} \sum_{i \in G} \frac{|\{j \in G : s_j \ge s_i\}|}{|\{j : s_j \ge s_i\}|},
# $$
#
# which is exactly `sklearn.metrics.average_precision_score(G.ravel(), s.ravel())`, ties included
# (tied pixels enter at the same threshold). A constant map scores the mask's area fraction; a map
# that ranks every object pixel above every background pixel scores 1. An empty mask has no AP: it is
# an error, or — when asked for — excluded and counted, never scored.
#
# **Binarisation and cIoU.** To compute an IoU the map is binarised. Three rules are in use:
#
# | rule | definition | used by |
# |---|---|---|
# | `top_fraction` (default, 0.5) | after per-sample min-max, keep pixels strictly above the value at ascending rank $\lfloor M(1-v)\rfloor$ | AVGN, EZ-VSL (median rule) |
# | `relative_max` | keep $s > v \cdot \max s$ on the raw map | DSOL |
# | `fixed` | keep $\mathrm{minmax}(s) \ge v$ | T-VSL |
#
# The consensus IoU of a binary prediction $P$ is
#
# $$
# \mathrm{cIoU}(P, G) = \frac{|P \cap G|}{|G| + |P \setminus G|}.
# $$
#
# **Success rate and AUC.** IoU@$\theta$ is the fraction of samples with cIoU $\ge \theta$
# ($\theta = 0.5$ for one source, $0.3$ for mixtures). The AUC is the trapezoid area under the success
# rate over the 21 thresholds $t_k = 0, 0.05, \dots, 1$:
#
# $$
# \mathrm{AUC} = \sum_{k=0}^{19} \tfrac{1}{2}\,\big(r(t_k) + r(t_{k+1})\big)\,(t_{k+1} - t_k),
# \qquad r(t) = \tfrac{1}{N}\,|\{n : \mathrm{cIoU}_n \ge t\}|.
# $$
#
# **Mixtures.** With $S$ sources per sample: **CAP** (class-aware AP) scores every source with the
# map of *its own class* and averages over all (sample, source) pairs; **PIAP** (permutation-invariant
# AP) takes, per sample, the best one-to-one assignment of the method's predicted maps to the sources
# of the mean AP (a source left without a map scores 0) — it does not need class labels and is
# never below CAP for a class-aware method; **CIoU@0.3** and **AUC** are computed over all
# (sample, source) pairs of the class-aware maps.

# %% [markdown]
# ## How the metrics behave
#
# Synthetic maps make the protocol's behaviour visible: each sample is a random box; its map is the
# box pooled to $7\times7$ (a model's feature resolution) plus Gaussian noise of growing strength.

# %%
gen = torch.Generator().manual_seed(seed)
example_masks = random_box_masks(4, generator=gen)
levels = [0.0, 0.3, 1.0, 3.0]
fig, axes = plt.subplots(1, len(levels), figsize=(3.2 * len(levels), 3.2))
for ax, noise, mask in zip(axes, levels, example_masks):
    m = metrics.upsample_maps(noisy_maps(mask[None], noise, generator=gen), (224, 224))[0]
    ap = metrics.pixel_average_precision(m[None], mask[None]).item()
    iou = metrics.ciou(metrics.binarize(m[None]), mask[None]).item()
    ax.imshow(m, cmap="jet")
    ax.contour(mask, levels=[0.5], colors="white", linewidths=1.5)
    ax.set_title(f"noise {noise}: AP {ap:.2f}, cIoU {iou:.2f}", fontsize=10)
    ax.axis("off")
fig.tight_layout()
figs.save_figure(fig, "00_example_maps")
plt.show()

# %%
rules = {"top 50% (AVGN)": ("top_fraction", 0.5), "fixed 0.5 (T-VSL)": ("fixed", 0.5), "0.5·max (DSOL)": ("relative_max", 0.5)}
noises = [0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0]
sweep = protocol_sweep(noises, cfg.demo_samples, rules, seed=seed)
grid = sns.relplot(data=sweep, x="noise", y="value", hue="rule", col="metric", kind="line", marker="o",
                   height=3.2, aspect=1.1, facet_kws={"sharey": False})
grid.set_titles("{col_name}")
figs.save_figure(grid.figure, "00_metric_behaviour")
plt.close(grid.figure)
sweep.pivot_table(index="noise", columns=["metric", "rule"], values="value").round(3)

# %% [markdown]
# ```{figure} ../figures/00_metric_behaviour.png
# :label: fig-metric-behaviour
# :alt: AP, IoU@0.5 and AUC against noise for three binarisation rules
# Pixel AP, IoU@0.5 and AUC of synthetic maps as the noise grows (random boxes, 7×7 maps upsampled to
# 224×224; the number of samples per level is set by the profile). AP does not depend on a
# binarisation rule; IoU@0.5 and AUC do — strongly.
# ```
#
# [](#fig-metric-behaviour) shows two things a reader of localization tables should keep in mind.
# AP degrades smoothly with noise and needs no threshold. IoU@0.5 and AUC depend as much on the
# binarisation rule as on the map: even a noise-free map reaches only a modest IoU@0.5 under the
# median rule, because that rule keeps half of the frame whatever the object's size.

# %%
areas = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
ceiling = perfect_map_ciou_vs_area(areas, rules)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
sns.lineplot(data=ceiling, x="area", y="ciou", hue="rule", style="rule", markers=True, dashes=True, ax=ax)
ax.axhline(0.5, color="grey", ls="--", lw=1)
ax.set(xlabel="object area (fraction of the frame)", ylabel="cIoU of a perfect map", ylim=(0, 1.05))
figs.save_figure(fig, "00_ciou_ceiling")
plt.close(fig)
ceiling.pivot_table(index="area", columns="rule", values="ciou").round(3)

# %% [markdown]
# ```{figure} ../figures/00_ciou_ceiling.png
# :label: fig-ciou-ceiling
# :alt: cIoU of a perfect map against object area
# The best cIoU each binarisation rule allows: a map that ranks every object pixel above every
# background pixel, for a centred square object of growing area (the `fixed` and `relative_max`
# curves coincide at 1).
# ```
#
# Under the median rule, a *perfect* map of an object covering less than a quarter of the frame has a
# cIoU below 0.5 ([](#fig-ciou-ceiling)): its IoU@0.5 is 0 however good the method. The benchmarks
# of this book report AP (which has no such ceiling) next to IoU@θ and AUC, and chapter 4 measures how
# much each method's ranking depends on the rule.

# %% [markdown]
# ## CAP and PIAP on a two-source example
#
# Two sources, left and right half of a frame. A class-aware method that produces good maps but
# attaches them to the wrong classes is penalised by CAP and not by PIAP.

# %%
masks2 = torch.zeros(2, 2, 224, 224, dtype=torch.bool)
masks2[:, 0, :, :112] = True
masks2[:, 1, :, 112:] = True
all_maps = torch.zeros(2, 3, 7, 7)
all_maps[:, 1, :, :3] = 1.0  # class 1 lights the left
all_maps[:, 2, :, 4:] = 1.0  # class 2 lights the right
classes = torch.tensor([[1, 2], [2, 1]])  # sample 2: the maps are attached to the swapped classes
maps, valid = metrics.class_aware_maps(all_maps, classes)
res = metrics.evaluate_multi_source(maps, masks2, valid)
pd.DataFrame({"CAP": res.cap.mean(1).numpy(), "PIAP": res.piap.numpy()}, index=["correct classes", "swapped classes"]).round(3)

# %% [markdown]
# ## Label-free scores that charge a false selection
#
# CAP and PIAP score the maps of the sounding sources; with the classes a method selects itself
# (`predicted`), a missed source scores 0 but a selected class that does *not* sound costs nothing,
# so selecting every class scores like knowing the answer. The book's label-free tables lead with
# two scores that charge it (`avgn.metrics.evaluate_semantic`): **semantic AP** (per sample, average
# precision over the class × pixel volume: the selected classes' maps as scores on one scale, the
# unselected classes below every score, the sounding classes' masks as positives) and **semantic
# mIoU** (AVSBench-semantic style: per class, the IoU of the binarised selected maps against the
# sounding masks, pixel counts summed over the set, averaged over classes). Below, the same two-source
# frame (class 1 on the left, class 2 on the right) with good maps, and four selections; silent classes
# 0 and 3 have maps that light the centre and the bottom rows, where nothing sounds.

# %%
frame = torch.zeros(1, 4, 7, 7)
frame[:, 1, :, :3], frame[:, 2, :, 4:], frame[:, 0, 2:5, 2:5], frame[:, 3, 5:, :] = 1.0, 1.0, 1.0, 1.0
gt_masks, gt_classes = masks2[:1], torch.tensor([[1, 2]])
SELECTIONS = {"the two sounding": [1, 2], "plus a silent one": [1, 2, 0], "one of the two": [1], "every class": [0, 1, 2, 3]}
rows = []
for name, sel in SELECTIONS.items():
    sem = metrics.evaluate_semantic(frame[:, sel], torch.tensor([sel]), gt_masks, gt_classes, num_classes=4)
    up = metrics.upsample_maps(frame[0], (224, 224))
    cap = sum(float(metrics.pixel_average_precision(up[c][None], gt_masks[0, i][None])) if c in sel else 0.0
              for i, c in enumerate(gt_classes[0].tolist())) / 2
    rows += [{"selection": name, "score": k, "value": v} for k, v in
             (("CAP", cap), ("semantic AP", float(sem.ap.mean())), ("semantic mIoU", sem.miou))]
label_free = pd.DataFrame(rows)
fig, ax = plt.subplots(figsize=(8, 3.2))
sns.barplot(data=label_free, x="selection", y="value", hue="score", ax=ax)
ax.set(title="Scores of one two-source frame under four selections", xlabel="classes the method selects", ylabel="score", ylim=(0, 1.05))
sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title="score")  # beside the bars, not over them
figs.save_figure(fig, "00_label_free_scores")
plt.close(fig)
label_free.pivot(index="selection", columns="score", values="value").loc[list(SELECTIONS)].round(3)

# %% [markdown]
# ```{figure} ../figures/00_label_free_scores.png
# :label: fig-label-free
# :alt: CAP, semantic AP and semantic mIoU of one frame under four selections of classes
# CAP does not change when a silent class is added to the selection, and selecting every class
# scores like the right selection; semantic AP and semantic mIoU drop for every false selection and
# for the miss.
# ```

# %% [markdown]
# ## Exactness and speed
#
# The implementation is checked against scikit-learn on every run of the test suite; here is the
# same check on this chapter's synthetic maps. The benchmark `benchmarks/bench_metrics.py` times the
# full single-source protocol on 5,000 samples against the per-sample scikit-learn loop of the
# reference code.

# %%
from sklearn.metrics import average_precision_score

check_masks = random_box_masks(min(cfg.demo_samples, 100), generator=gen)
check_maps = metrics.upsample_maps(noisy_maps(check_masks, 0.5, generator=gen), (224, 224))
ours = metrics.pixel_average_precision(check_maps, check_masks)
ref = torch.tensor([average_precision_score(m.flatten().numpy(), s.flatten().numpy()) for s, m in zip(check_maps, check_masks)], dtype=torch.float64)
print(f"{len(ours)} samples: max |AP(avgn) - AP(sklearn)| = {(ours - ref).abs().max().item():.1e}")


# %% [markdown]
# ## The code this chapter ran on

# %%
print(f"code revision: {git_revision()}")
