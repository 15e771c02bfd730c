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
# # 1. Data preparation: the embedded benchmark
#
# AVGN is evaluated on MUSIC (solo and duet performances on YouTube) and on VGGSound (the
# instrument subset, and "duets" made by concatenating two single-source frames). Neither is
# reachable here — the videos are on YouTube, and only PyPI, npm and Debian packages can be
# installed — so the book builds its own benchmark from **real sounds and pictures that ship in
# open packages**: recorded instruments and animals (GCompris, Tux Paint), General MIDI soundfonts
# playing melodies in each instrument's range (FluidR3, TimGM6mb, MuseScore), and cut-out photos,
# drawings, emoji and icons (Tux Paint, GCompris, OpenClipart, Noto, Fluent, OpenMoji, Twemoji,
# Game-icons). Chapter 0 lists the packages; `avgn.data.catalog` lists every asset used.
#
# **A scene** is a background (a real photo crop or a procedural texture) with the *sounding* objects
# pasted at random positions, scales, rotations and colours, plus *silent distractors*: objects of
# other classes that are seen but not heard. Later objects occlude earlier ones, and the ground truth
# of a sounding object is the mask of its **visible** pixels (a layout is redrawn when an object keeps
# less than 30 % of its pixels). Its audio is the sum of one loudness-normalised 3 s clip per source,
# each with a random gain in ±6 dB, and for evaluation scenes sometimes pink background noise
# (SNR 10–30 dB).
#
# **Two layouts**, as in the paper: `concat` — two single-object frames side by side (448 × 224), the
# VGGSound-Duet protocol — and `scene` — one 224 × 224 frame with several objects, like MUSIC-Duet.
#
# **Splits.** `train` (solo scenes; duets are mixed on the fly in training), `val`, `test` (1, 2, 3 and
# 4 sources), and four shifted test sets: `test_style` (a picture source never seen in training,
# Twemoji), `test_audio` (a soundfont never heard in training, MuseScore), `test_zeroshot` (three
# classes never seen in train/val, not even as distractors) and `test_real` (recorded audio only).
# Clip pools are cut into disjoint train / val / test parts.
#
# **How it differs from MUSIC / VGGSound.** Scenes are composited, not filmed: objects are not held
# by players, there is no motion, and the sounds do not come from the pictured object's own
# recording. In exchange the ground truth is exact (pixel masks of visible parts rather than boxes),
# the number of sources is controlled (1–4), distractors and occlusion are explicit, and every
# shift is a separate test set. The label set is 10 MUSIC instruments (erhu has no asset) and
# 13 animals; MUSIC has 11 classes, VGGSound-Instruments 37.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
# the folder that holds data/ (the benchmark, the runs read from the store), figures/ and results/ (".." is the repository)
workdir = ".."

# %%
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Audio, display
from matplotlib import pyplot as plt

from avgn.config import get_profile
from avgn.data import catalog
from avgn.data.build import build_dataset, dataset_dir
from avgn.data.datasets import SceneDataset, SpecConfig, log_spectrogram
from avgn.data.manifest import load_build_info, load_clip_table, load_manifest, split_summary
from avgn.viz import set_style
from avgnbook.chapter import ChapterFigures, ChapterPaths

set_style()
paths = ChapterPaths.of(workdir)
figs = ChapterFigures("01", paths.figures)  # writes figures stamped with this chapter and the code revision
cfg = get_profile(profile).data
out = dataset_dir(paths.data, profile, seed)
pd.DataFrame.from_dict(
    {k: str(v) for k, v in cfg.to_dict().items()}, orient="index", columns=[f"DataConfig ({profile})"]
)

# %% [markdown]
# ## Building it
#
# One call builds the benchmark for the profile (`avgn data build --profile cpu --out DIR` does the
# same from a shell). The build is deterministic in its seed, resumable (finished audio pools and
# scene chunks are skipped on a rerun) and refuses to mix settings in one folder. A missing asset
# package stops it with the package name and its install command; nothing is ever substituted.

# %%
manifest_path = build_dataset(profile=profile, seed=seed, out=out, progress=True)
df = load_manifest(manifest_path)
info = load_build_info(out)
clips = load_clip_table(out)
print(f"{len(df)} scenes, {len(clips)} clips in {out}")

# %% [markdown]
# ## Classes and their assets
#
# Audio sources per class (soundfont presets and recordings; `real files` counts the distinct real
# recordings behind them), pictures per style, and the splits each class sounds in. Held-out classes
# appear only in `test_zeroshot`; a class without a picture in the held-out picture source, or without
# a clip of the held-out soundfont, is absent from `test_style` / `test_audio`.

# %%
cov = catalog.coverage_table()
table = cov[["group", "audio_synthetic", "audio_real", "real_files", "vis_photo", "vis_drawing", "vis_emoji", "vis_icon"]]
table = table.rename(columns=lambda c: c.replace("audio_", "audio: ").replace("vis_", "pictures: ").replace("_", " "))
split_classes = info["split_classes"]
table["sounds in"] = [
    ", ".join(s for s in split_classes if c in split_classes[s]) or "-" for c in table.index
]
table["notes"] = cov["notes"]
table

# %% [markdown]
# ## Split statistics
#
# Scenes per split, task and layout; the classes they use; objects per frame (sounding sources plus
# distractors); the mean visible area of a sounding source (fraction of the image); the share of
# mixtures with background noise (training mixtures get theirs on the fly).

# %%
summary = split_summary(df)
summary

# %%
d = df.assign(objects=df["n_sources"] + df["distractor_classes"].map(len))
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
sns.countplot(data=d[d["layout"] == "scene"], x="objects", hue="task", ax=axes[0])
axes[0].set(title="objects per scene frame", xlabel="objects (sounding + distractors)", ylabel="scenes")
areas = pd.DataFrame(
    [(t, a) for t, v in zip(df["task"], df["areas"]) for a in v], columns=["task", "area"]
)
sns.histplot(data=areas, x="area", hue="task", stat="density", common_norm=False, element="step",
             bins=30, ax=axes[1])
axes[1].set(title="visible area of a sounding object", xlabel="fraction of the image")
vis = pd.DataFrame([(t, v) for t, vs in zip(df["task"], df["visibility"]) for v in vs], columns=["task", "visibility"])
sns.histplot(data=vis, x="visibility", hue="task", stat="density", common_norm=False, element="step",
             bins=20, ax=axes[2])
axes[2].axvline(cfg.visibility_floor, color="k", ls="--", lw=1)
axes[2].set(title="visible fraction of a sounding object", xlabel="visible / full pixels")
fig.tight_layout()
figs.save_figure(fig, "01_scene_statistics");

# %%
occ = pd.DataFrame(
    [(s, c) for s, v in zip(df["split"], df["classes"]) for c in v], columns=["split", "class"]
)
occ["split"] = occ["split"].where(occ["split"].isin(["train", "val", "test"]), "shifted tests")
order = list(info["classes"])
fig, ax = plt.subplots(figsize=(15, 4))
sns.countplot(data=occ, x="class", hue="split", order=order, ax=ax)
ax.set(title="class balance: sounding sources per class", xlabel="", ylabel="sources")
ax.tick_params(axis="x", rotation=60)
fig.tight_layout()
figs.save_figure(fig, "01_class_balance");

# %% [markdown]
# ## Example scenes
#
# Ground-truth masks of the sounding objects are outlined (one colour per source); unoutlined
# objects are silent distractors. The title lists the sounding classes.

# %%
def show_scene(ax, row, root):
    from PIL import Image

    img = np.asarray(Image.open(root / row.image_path))
    ax.imshow(img)
    colors = ["#ff2d2d", "#2dd4ff", "#ffe12d", "#b62dff"]
    for k, mp in enumerate(row.mask_paths):
        m = np.asarray(Image.open(root / mp)).astype(float)
        ax.contour(m, levels=[0.5], colors=[colors[k % 4]], linewidths=1.5)
    ax.set_title(" + ".join(row.classes), fontsize=9)
    ax.grid(False)
    ax.axis("off")


rng = np.random.default_rng(seed)
picks = []
for split, task, layout in [
    ("train", "solo", "scene"), ("test", "duet", "scene"), ("test", "trio", "scene"),
    ("test", "quartet", "scene"), ("test_style", "duet", "scene"), ("test_zeroshot", "solo", "scene"),
]:
    sub = df[(df["split"] == split) & (df["task"] == task) & (df["layout"] == layout)]
    picks += [sub.iloc[i] for i in rng.choice(len(sub), size=min(2, len(sub)), replace=False)]
fig, axes = plt.subplots(2, 6, figsize=(18, 6.6))
for ax, row in zip(axes.T.flat, picks):
    show_scene(ax, row, out)
    ax.set_title(f"{row.split}/{row.task}\n" + ax.get_title(), fontsize=9)
fig.tight_layout()
figs.save_figure(fig, "01_example_scenes");

# %%
concat = df[(df["layout"] == "concat") & (df["split"] == "test")]
fig, axes = plt.subplots(1, 3, figsize=(18, 3.4))
for ax, i in zip(axes, rng.choice(len(concat), size=min(3, len(concat)), replace=False)):
    show_scene(ax, concat.iloc[i], out)
fig.suptitle("concat layout (VGGSound-Duet protocol): two one-source frames side by side")
fig.tight_layout()
figs.save_figure(fig, "01_example_concat");

# %% [markdown]
# ## Listening to mixtures
#
# A test duet: the mixture as stored, then each source as it sits in the mixture (its gain
# applied). The spectrograms are the model's audio input (`SpecConfig`: 3 s, 50 ms Hann window,
# 25 ms hop, log magnitude → 401 frequency bins × 121 frames at 16 kHz).

# %%
spec_cfg = SpecConfig()
duets = SceneDataset(out, "test", tasks=["duet"], layouts=["scene"], return_sources=True)
sample = duets[int(rng.integers(len(duets)))]
names = sample["meta"]["class_names"]
gains = sample["gains_db"][: len(names)].tolist()
print(sample["meta"]["scene_id"], "|", ", ".join(f"{n} ({g:+.1f} dB)" for n, g in zip(names, gains)))
display(Audio(sample["audio"].numpy(), rate=spec_cfg.sample_rate))
for k, n in enumerate(names):
    print(n)
    display(Audio(sample["sources"][k].numpy(), rate=spec_cfg.sample_rate, normalize=False))

# %%
waves = [sample["audio"]] + [sample["sources"][k] for k in range(len(names))]
titles = ["mixture"] + names
fig, axes = plt.subplots(1, len(waves) + 1, figsize=(5 * (len(waves) + 1), 3.6),
                         gridspec_kw={"width_ratios": [1] + [1.2] * len(waves)})
show_scene(axes[0], df[df["scene_id"] == sample["meta"]["scene_id"]].iloc[0], out)
F, T = spec_cfg.shape[1:]
extent = [0, spec_cfg.seconds, 0, spec_cfg.sample_rate / 2000]
for ax, w, t in zip(axes[1:], waves, titles):
    s = log_spectrogram(w, spec_cfg).numpy()
    im = ax.imshow(s, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=-8, vmax=s.max())
    ax.set(title=t, xlabel="time (s)", ylabel="frequency (kHz)")
    ax.grid(False)
fig.colorbar(im, ax=axes[1:], shrink=0.8, label="log magnitude")
figs.save_figure(fig, "01_example_spectrograms");

# %% [markdown]
# A mixture from the real-recordings test split, and one from the held-out soundfont:

# %%
for split in ("test_real", "test_audio"):
    ds = SceneDataset(out, split, tasks=["duet"], layouts=["scene"])
    s = ds[int(rng.integers(len(ds)))]
    print(split, ":", " + ".join(s["meta"]["class_names"]))
    display(Audio(s["audio"].numpy(), rate=spec_cfg.sample_rate))

# %% [markdown]
# ## What the next chapters use
#
# * `OnTheFlyMixtureDataset(out, layout="concat")` — training duets: a solo scene and a solo scene
#   of another class side by side, clips and gains redrawn every epoch.
# * `SceneDataset(out, split, tasks=..., layouts=...)` — the fixed evaluation scenes, with their
#   stored mixtures and per-source masks.
# * `avgn.data.adapters` — the same samples from the real MUSIC / VGGSound-Instruments / VGG-SS files
#   for readers who have the videos.
#
# The manifest schema is documented in `avgn.data.manifest` and `data/README.md`.


# %% [markdown]
# ## What this chapter found

# %%
from avgnbook.findings import show_findings  # noqa: E402

sc = info["split_classes"]
solo_area = areas.loc[areas["task"] == "solo", "area"]
show_findings("01", [
    f"The benchmark holds {len(df)} scenes in {df['split'].nunique()} splits, built from {len(clips)} audio clips of {len(info['classes'])} classes: "
    f"{len(sc['train'])} to train on and {len(sc.get('test_zeroshot', []))} held out for zero-shot tests.",
    f"{clips['real'].mean():.0%} of the clips are real recordings; the rest are rendered from soundfonts "
    f"(a soundfont never heard in training is its own test split).",
    f"A sounding object covers a median {solo_area.median():.1%} of its frame in the one-source scenes "
    f"({solo_area.quantile(0.9):.1%} at the 90th percentile), "
    f"{'far less than' if solo_area.quantile(0.9) < 0.5 else 'comparable with'} the half of the frame that the protocol's median binarisation keeps.",
], paths.results)

# %% [markdown]
# ## The code this chapter ran on

# %%
from avgn.env import git_revision  # noqa: E402
from avgnbook.chapter import code_version  # noqa: E402

print(f"chapter 01: {code_version()}")
print(f"code revision: {git_revision()}")
