"""Rendering a planned build (:mod:`avgn.data.planning`) into files, unit by unit, serially or over a
process pool (:func:`_map`: results identical either way): the audio pools (:func:`_render_pools`),
then chunks of scenes — frame, masks, and for val / test the fixed mixture (:func:`_render_chunk`).
A worker's provider and sprite cache are module globals of the worker process, set by
:func:`_init_worker` (the pool's initializer); :func:`avgn.data.build.build_dataset` drives it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from avgn.io import atomic_write_bytes
from avgn.data.audio import pink_noise
from avgn.data.config import DataConfig
from avgn.data.planning import Pool


# --------------------------------------------------------------------------------------------------
# workers: the provider and the sprites of a worker process (set by its initializer)
# --------------------------------------------------------------------------------------------------


_PROVIDER = None


_SPRITES: dict[tuple, np.ndarray] = {}


def _init_worker(provider, sprites: dict | None = None) -> None:
    global _PROVIDER
    _PROVIDER = provider
    if sprites:
        _SPRITES.update(sprites)


def _sprite_key(asset) -> tuple:
    return (asset.cls, asset.source, asset.key)


def _load_sprites(assets: list) -> list[np.ndarray]:
    return [_sprite(a) for a in assets]


def _sprite(asset) -> np.ndarray:
    sk = _sprite_key(asset)
    sp = _SPRITES.get(sk)
    if sp is None:
        sp = np.asarray(_PROVIDER.load_sprite(asset, max_size=256))
        if sp.ndim != 3 or sp.shape[2] != 4:
            raise ValueError(f"load_sprite({asset.key!r}) returned shape {sp.shape}, expected [h, w, 4]")
        _SPRITES[sk] = sp
    return sp


def _map(fn, tasks: list, workers: int, provider, progress_cb, sprites: dict | None = None) -> Iterable:
    """``map`` in order, serially or over a process pool (results identical either way)."""
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(provider, sprites)
        for t in tasks:
            r = fn(t)
            progress_cb(t, r)
            yield r
        return
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(provider, sprites)) as pool:
        for t, r in zip(tasks, pool.imap(fn, tasks, chunksize=1)):
            progress_cb(t, r)
            yield r


# --------------------------------------------------------------------------------------------------
# rendering: audio pools, frames, masks, mixtures
# --------------------------------------------------------------------------------------------------


def _render_pools(task: tuple) -> list[list[dict]]:
    """Render and store the audio pools of one unit (pools of one source: one font load); clip rows per pool."""
    out, pools, cfg, seeds = task
    return [_render_pool(out, p, cfg, sd) for p, sd in zip(pools, seeds)]


def _render_pool(out: str, pool: Pool, cfg: DataConfig, seed: int) -> list[dict]:
    from avgn.data.audio import write_audio

    clips = np.asarray(
        _PROVIDER.render_clips(pool.source, cfg.clips_per_source, seed, cfg.clip_seconds, cfg.sample_rate),
        dtype=np.float32,
    )
    T = int(round(cfg.clip_seconds * cfg.sample_rate))
    if clips.shape != (cfg.clips_per_source, T):
        raise ValueError(
            f"render_clips({pool.source.key!r}) returned shape {clips.shape}, expected {(cfg.clips_per_source, T)}"
        )
    rows = []
    for i in range(cfg.clips_per_source):
        write_audio(Path(out) / pool.clip_path(i), clips[i], cfg.sample_rate)
        rows.append(
            {
                "clip_id": pool.clip_id(i),
                "class": pool.cls,
                "audio_source": pool.source.source,
                "audio_key": pool.source.key,
                "kind": getattr(pool.source, "kind", ""),
                "real": bool(pool.source.real),
                "index": i,
                "part": pool.parts[i],
                "path": pool.clip_path(i),
                "seed": seed,
            }
        )
    return rows


def _save_image(path: Path, img: np.ndarray, fmt: str) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    else:
        Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
    atomic_write_bytes(path, buf.getvalue())


def _save_mask(path: Path, mask: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _render_scene(spec: dict, out: Path, cfg: DataConfig, clip_cache: dict) -> dict:
    from avgn.data.audio import mix, read_audio, write_audio
    from avgn.data.scenes import FrameObject, compose_frame, mask_box

    S = cfg.image_size
    rng = np.random.default_rng(spec["render_seed"])
    srcs = spec["sources"]
    concat = spec["layout"] == "concat"
    frames, frame_masks, frame_vis, kept_d = [], [], [], []
    for f, bg_key in enumerate(spec["backgrounds"]):
        bg = np.asarray(_PROVIDER.load_background(bg_key, S, rng))
        if bg.shape != (S, S, 3):
            raise ValueError(f"load_background({bg_key!r}) returned shape {bg.shape}, expected {(S, S, 3)}")
        src_idx = [f] if concat else list(range(len(srcs)))
        objs = [FrameObject(_sprite(srcs[k]["visual"]), j) for j, k in enumerate(src_idx)]
        objs += [FrameObject(_sprite(a), None) for _, a in spec["distractors"][f]]
        res = compose_frame(
            bg,
            objs,
            rng,
            scale_solo=cfg.scale_solo,
            scale_multi=cfg.scale_multi,
            rotation_deg=cfg.rotation_deg,
            color_jitter=cfg.color_jitter,
            visibility_floor=cfg.visibility_floor,
            max_layout_tries=cfg.max_layout_tries,
        )
        frames.append(res.image)
        frame_masks.append(res.masks)
        frame_vis.append(res.visibility)
        kept_d.append(spec["distractors"][f][: res.n_distractors])
    image = np.concatenate(frames, axis=1)
    H, W = image.shape[:2]
    masks, vis = [], []
    for k in range(len(srcs)):
        if concat:
            m = np.zeros((H, W), dtype=bool)
            m[:, k * S : (k + 1) * S] = frame_masks[k][0]
            masks.append(m)
            vis.append(frame_vis[k][0])
        else:
            masks.append(frame_masks[0][k])
            vis.append(frame_vis[0][k])
    split, sid = spec["split"], spec["scene_id"]
    ext = "png" if cfg.image_format == "png" else "jpg"
    image_path = f"images/{split}/{sid}.{ext}"
    _save_image(out / image_path, image, cfg.image_format)
    mask_paths, boxes, boxes_px, areas = [], [], [], []
    for k, m in enumerate(masks):
        p = f"masks/{split}/{sid}_s{k}.png"
        _save_mask(out / p, m)
        mask_paths.append(p)
        x1, y1, x2, y2 = mask_box(m)
        boxes_px.append([x1, y1, x2, y2])
        boxes.append([x1 / W, y1 / H, x2 / W, y2 / H])
        areas.append(float(m.sum()) / (H * W))
    mixture_path = None
    if split != "train":
        T = int(round(cfg.clip_seconds * cfg.sample_rate))
        waves = []
        for s in srcs:
            w = clip_cache.get(s["clip_id"])
            if w is None:
                w = read_audio(out / s["clip_path"], cfg.sample_rate)
                if w.shape[0] != T:
                    raise ValueError(f"clip {out / s['clip_path']} has {w.shape[0]} samples, expected {T}")
                clip_cache[s["clip_id"]] = w
            waves.append(w)
        noise = None
        if spec["snr_db"] is not None:
            noise = pink_noise(T, np.random.default_rng([spec["seed"], 2]))
        y = mix(np.stack(waves), np.array([s["gain_db"] for s in srcs]), noise=noise, snr_db=spec["snr_db"])
        mixture_path = f"audio/mixtures/{split}/{sid}.flac"
        write_audio(out / mixture_path, y, cfg.sample_rate)
    d_all = [x for fr in kept_d for x in fr]
    return {
        "scene_id": sid,
        "split": split,
        "task": spec["task"],
        "layout": spec["layout"],
        "n_sources": len(srcs),
        "height": H,
        "width": W,
        "image_path": image_path,
        "mask_paths": mask_paths,
        "classes": [s["cls"] for s in srcs],
        "class_ids": [_class_id(s["cls"]) for s in srcs],
        "boxes": boxes,
        "boxes_px": boxes_px,
        "visibility": [round(v, 6) for v in vis],
        "areas": [round(a, 6) for a in areas],
        "gains_db": [s["gain_db"] for s in srcs],
        "clip_ids": [s["clip_id"] for s in srcs],
        "clip_paths": [s["clip_path"] for s in srcs],
        "audio_sources": [s["audio_source"] for s in srcs],
        "audio_keys": [s["audio_key"] for s in srcs],
        "audio_real": [s["audio_real"] for s in srcs],
        "visual_keys": [s["visual"].key for s in srcs],
        "visual_sources": [s["visual"].source for s in srcs],
        "visual_styles": [s["visual"].style for s in srcs],
        "distractor_classes": [c for c, _ in d_all],
        "distractor_keys": [a.key for _, a in d_all],
        "distractor_sources": [a.source for _, a in d_all],
        "backgrounds": list(spec["backgrounds"]),
        "mixture_path": mixture_path,
        "snr_db": spec["snr_db"],
        "seed": spec["seed"],
    }


_CLASS_IDS: dict[str, int] = {}


def _class_id(name: str) -> int:
    return _CLASS_IDS[name]


def _render_chunk(task: tuple) -> list[dict]:
    out, specs, cfg, class_ids = task
    _CLASS_IDS.clear()
    _CLASS_IDS.update(class_ids)
    cache: dict = {}
    return [_render_scene(s, Path(out), cfg, cache) for s in specs]


def _render_chunk_task(task: tuple) -> list[dict]:
    return _render_chunk(task[:4])
