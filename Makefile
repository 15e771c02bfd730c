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

test: setup html smoke-notebooks
	$(PY) -m pytest tests build/smoke --nbval-lax -p no:cacheprovider --durations=25

bench: setup
	$(PY) benchmarks/bench_metrics.py

clean:
	rm -rf build _build
