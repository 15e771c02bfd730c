"""avgnbook — the book's studies, apart from the library a user imports.

``avgn`` is the library (data, models, methods, metrics, the training engine, runs and the run store,
the command line, ``localize``); this package holds what the book's chapters study with it, and
imports ``avgn`` — never the other way round (``tests/test_imports.py``):

- :mod:`avgnbook.variants`     the configurations the book compares (typed :class:`avgn.runs.Variant` s)
- :mod:`avgnbook.plan`         the book's run plan (every run chapters 00-09 read), registered as the plan ``book``
- :mod:`avgnbook.chapter`      a chapter's set-up in one call (``chapter_context``): data, stored runs
- :mod:`avgnbook.pipeline`     train / evaluate / collect variants and references outside the store
- :mod:`avgnbook.results`      the committed long-format results files (``results/``)
- :mod:`avgnbook.consistency`  the book against its run store (one run per seed, current runs, clean revisions)
- :mod:`avgnbook.synthetic`    synthetic maps for chapter 0's protocol demonstrations
- :mod:`avgnbook.analysis`     analyses beyond the summary numbers (binarisation, presence, embeddings)
- :mod:`avgnbook.diagnostics`  does a model learn from the audio? controls and references
- :mod:`avgnbook.zeroshot`     zero-shot evaluation of the held-out classes
- :mod:`avgnbook.anchors`      T-VSL's anchors beside a run's class-aware features
- :mod:`avgnbook.shape_masks`  chapter 8: maps -> point prompts -> segmenter masks, AVSBench scores
- :mod:`avgnbook.explorer`     the interactive explorer of chapter 6
"""
