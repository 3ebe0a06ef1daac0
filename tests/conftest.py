"""Shared test set-up. Its presence puts ``tests/`` on ``sys.path`` (pytest's rootdir
conftest rule), so test modules can import shared helpers such as ``caseworld``."""
