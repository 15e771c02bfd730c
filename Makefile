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

# the unit tests and the chapters' smoke runs on two process slots, one torch thread each (2 cores):
# chapters 0-3 in order beside the unit tests, then every later chapter (they reuse chapters 0-3's data
# and runs) in whichever slot frees first; each job's log is printed when it ends (scripts/ci_test.py)
test: setup html smoke-notebooks
	$(PY) scripts/ci_test.py --jobs 2

bench: setup
	$(PY) benchmarks/bench_metrics.py

clean:
	rm -rf build _build
