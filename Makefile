# avgn — the two commands of README.md:
#   make book   set up, execute every chapter with papermill (profile cpu), render the HTML book
#   make test   set up, unit tests + notebook smoke runs (pytest --nbval-lax) + book build and reader test
PY      := .venv/bin/python
PROFILE ?= cpu

.PHONY: setup notebooks html book smoke-notebooks test bench clean

setup:
	bash scripts/setup.sh

notebooks: setup
	$(PY) scripts/run_notebooks.py --profile $(PROFILE)

html: setup
	$(PY) scripts/build_book.py

book: notebooks html
	@echo "book: _build/html/index.html"

smoke-notebooks: setup
	rm -rf build/smoke
	$(PY) scripts/run_notebooks.py --profile smoke --prepare-only --out build/smoke

# two pytest processes side by side, one torch thread each (2 cores): the chapters' smoke runs in
# order (a chapter reuses the data and runs of the chapters before it; log in build/smoke-chapters.log,
# printed at the end) and the unit tests; the target fails if either fails
test: setup html smoke-notebooks
	@OMP_NUM_THREADS=1 $(PY) -m pytest build/smoke --nbval-lax -p no:cacheprovider --durations=15 > build/smoke-chapters.log 2>&1 & nb=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -p no:cacheprovider --durations=15; t=$$?; \
	wait $$nb; n=$$?; echo "=================== chapters (smoke): build/smoke-chapters.log ==================="; \
	cat build/smoke-chapters.log; echo "make test: unit tests exit $$t, chapters exit $$n"; [ $$t -eq 0 ] && [ $$n -eq 0 ]

bench: setup
	$(PY) benchmarks/bench_metrics.py

clean:
	rm -rf build _build
