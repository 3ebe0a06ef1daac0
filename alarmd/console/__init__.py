"""The operator console (``alarmctl console``): a Textual client of the control API."""

from __future__ import annotations

from alarmd.console.app import run_console

__all__ = ["run_console"]
