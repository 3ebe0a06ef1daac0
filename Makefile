# The two commands a newcomer needs (see README.md):
#   make run   - set up, then run alarmd on its embedded default configuration
#   make test  - set up, then run lint, type checks and the whole test suite
.PHONY: run test bootstrap lint bench

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	.venv/bin/alarmd run

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -q

bench: bootstrap
	.venv/bin/python bench/dc09_ingest.py
