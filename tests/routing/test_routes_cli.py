"""``alarmctl routes ...`` as a municipality's CI would run it: exit codes and output."""

from __future__ import annotations

import pytest

from alarmd.cli import alarmctl_main


def test_routes_test_passes_on_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert alarmctl_main(["routes", "test"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_routes_explain_names_route_and_mode(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["routes", "explain", "--tenant", "eksempel-kommune", "--kind", "fall"]
    assert alarmctl_main([*argv, "--at", "2026-12-24T22:00"]) == 0
    out = capsys.readouterr().out
    assert "route 'night-response' matched" in out
    assert "mode response" in out


def test_routes_explain_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "routes",
        "explain",
        "--tenant",
        "nowhere",
        "--kind",
        "fall",
        "--at",
        "2026-12-24T22:00",
    ]
    assert alarmctl_main(argv) == 2
    assert "nowhere" in capsys.readouterr().err


def test_routes_check_finds_no_gap_in_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert alarmctl_main(["routes", "check"]) == 0
    assert "every alarm kind has a route at every moment" in capsys.readouterr().out
