# Two commands do all the set-up on a fresh clone (README):
#   make demo   the main job on the built-in demo data
#   make test   the test suite (what .ci/run runs)
# Both build the environment on first use (tools/env/bootstrap.sh, cached by pinned
# versions) and reuse it afterwards.
PY := .venv/bin/python
RUN := PYTHONPATH=$(CURDIR) $(PY)

.PHONY: env demo test versions

env:
	@bash tools/env/bootstrap.sh

demo: env
	$(RUN) tools/run_demo.py $(ARGS)

test: env
	$(RUN) -m pytest $(or $(ARGS),tests)

versions: env
	$(RUN) tools/collect_env.py
