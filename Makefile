# Two commands do all the set-up on a fresh clone (README):
#   make demo   the main job on the built-in demo data
#   make test   the test suite (what .ci/run runs)
# Both build the environment on first use (tools/env/bootstrap.sh, cached by pinned
# versions) and reuse it afterwards.
PY := .venv/bin/python

.PHONY: env demo test versions

env:
	@bash tools/env/bootstrap.sh
	@bash tools/env/kernel.sh

demo: env
	$(PY) demo/run_demo.py $(ARGS)

test: env
	$(PY) -m pytest $(or $(ARGS),tests)

versions: env
	$(PY) tools/collect_env.py
