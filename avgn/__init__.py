"""avgn — Audio-Visual Grouping Network for sound localization from mixtures.

A thin research library backing the avgn book (whose studies live apart, in :mod:`avgnbook`). Each module has one job; from the bottom of the
import graph to the top (a module imports only from those above it in this list; no import circle,
``tests/test_imports.py``):

- :mod:`avgn.io`           atomic writes
- :mod:`avgn.env`          device resolution, seeding and the environment report
- :mod:`avgn.distributed`  data-parallel training under ``torchrun`` (process group, shards, gathered metrics)
- :mod:`avgn.metrics`      the evaluation protocol (pixel AP, cIoU, AUC, CAP, PIAP)
- :mod:`avgn.boxes`        box/mask helpers for the public annotation formats
- :mod:`avgn.data`         the embedded audio-visual mixture benchmark, its datasets and batching, dataset adapters
- :mod:`avgn.features`     cached backbone features of a frozen visual backbone
- :mod:`avgn.text`         text anchors: class names through the packaged all-MiniLM-L6-v2 (offline, cached), or an AudioCLIP checkpoint's text tower
- :mod:`avgn.models`       AVGN, EZ-VSL, Mix-and-Localize, T-VSL, the priors (``nn.Module`` s and their configs)
- :mod:`avgn.losses`       the training losses
- :mod:`avgn.checkpoint`   checkpoints: atomic, resumable
- :mod:`avgn.clusters`     object clusters (K-means dictionary, Hungarian cluster -> class), NSA and false alarms
- :mod:`avgn.segment`     point prompts from a map, promptable segmenters (GrabCut, Segment Anything by path)
- :mod:`avgn.config`       configuration dataclasses and the one profile table (``smoke`` | ``cpu`` | ``gpu``)
- :mod:`avgn.methods`      the method interface and registry: every method and reference, one module each
- :mod:`avgn.experiment`   one run's configuration (method x profile, dotted overrides)
- :mod:`avgn.runs`         run folders (``RunFolder``: a run's ``config.json``, resume checks, ``run.json``), variants, reproduce commands, loading a trained run
- :mod:`avgn.evaluate`     evaluation sets, predictions, scoring under both source-selection modes
- :mod:`avgn.engine`       the training loop with hooks: ``Trainer.fit``, callbacks for checkpoints, selection, history
- :mod:`avgn.train`        one training run: its data, the loop's callbacks, DistributedDataParallel (``train``)
- :mod:`avgn.store`        the run store: planned runs and their ids, records with fp16 weights, the queue
- :mod:`avgn.localize`     ``avgn localize``: a trained run on your own frame and recording, or video (ffmpeg)
- :mod:`avgn.viz`          figure helpers (save to ``figures/``)
- :mod:`avgn.cli`          the ``avgn`` command line (also ``python -m avgn``, ``torchrun -m avgn``)
"""

__version__ = "0.1.0"
