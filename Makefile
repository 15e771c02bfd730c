# avgn — the commands of README.md:
#   make book   set up, build the data, execute every chapter from the committed run store (profile cpu;
#               no training), render the HTML book
#   make test   set up, unit tests + notebook smoke runs (pytest --nbval-lax) + book build and reader test
#   make runs   retrain and re-evaluate every run of the plan from scratch into build/store-rerun
#               (resumable across sittings) and compare it with the committed store, metric by metric
#   make store  train, evaluate and store what the committed store lacks (avgn runs train)
PY      := .venv/bin/python
PROFILE ?= cpu

.PHONY: setup data features notebooks html book smoke-notebooks test bench clean runs store status

setup:
	bash scripts/setup.sh

data: setup
	.venv/bin/avgn data build --profile $(PROFILE) --quiet

# the frozen backbone's features of the frames the chapters evaluate, once, with both cores (chapters
# executed side by side would otherwise take turns on it; training computes the training split's itself)
features: data
	.venv/bin/avgn data features --profile $(PROFILE) --quiet

notebooks: setup data features
	$(PY) scripts/run_notebooks.py --profile $(PROFILE) --jobs 2

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

status: setup
	.venv/bin/avgn runs status --profile $(PROFILE)

store: setup data
	.venv/bin/avgn runs train --profile $(PROFILE) --workers 2

runs: setup data
	.venv/bin/avgn runs train --profile $(PROFILE) --workers 2 --store build/store-rerun
	.venv/bin/avgn runs compare build/store-rerun --profile $(PROFILE)

bench: setup
	$(PY) benchmarks/bench_metrics.py

clean:
	rm -rf build _build
