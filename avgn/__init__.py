"""avgn — Audio-Visual Grouping Network for sound localization from mixtures.

A thin research library backing the avgn book. Submodules have one job each:

- :mod:`avgn.config`   profiles (``smoke`` | ``cpu`` | ``gpu``) as dataclasses
- :mod:`avgn.env`      device resolution, seeding and the environment report
- :mod:`avgn.metrics`  the evaluation protocol (pixel AP, cIoU, AUC, CAP, PIAP)
- :mod:`avgn.boxes`    box/mask helpers for the public annotation formats
- :mod:`avgn.data`     the embedded audio-visual mixture benchmark and dataset adapters
- :mod:`avgn.viz`      figure helpers (save to ``figures/``)
"""

__version__ = "0.1.0"
