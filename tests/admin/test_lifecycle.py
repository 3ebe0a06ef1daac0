"""The case-management rules as tables: every allowed step, and that every other step is
refused with a message that says what is allowed instead."""

from __future__ import annotations

from datetime import date

import pytest

from alarmd.admin import lifecycle
from alarmd.admin.lifecycle import DecisionFacts, RuleError

ORDER_STATES = ("ordered", "accepted", "scheduled", "done", "cancelled")
ORDER_ACTIONS = ("accept", "schedule", "done", "cancel")
ALLOWED_ORDER = {
    ("ordered", "accept"): "accepted",
    ("ordered", "schedule"): "scheduled",
    ("ordered", "done"): "done",
    ("ordered", "cancel"): "cancelled",
    ("accepted", "schedule"): "scheduled",
    ("accepted", "done"): "done",
    ("accepted", "cancel"): "cancelled",
    ("scheduled", "schedule"): "scheduled",
    ("scheduled", "done"): "done",
    ("scheduled", "cancel"): "cancelled",
}


@pytest.mark.parametrize("state", ORDER_STATES)
@pytest.mark.parametrize("action", ORDER_ACTIONS)
def test_order_steps(state: str, action: str) -> None:
    expected = ALLOWED_ORDER.get((state, action))
    if expected is None:
        with pytest.raises(RuleError) as caught:
            lifecycle.order_step(state, action)
        message = str(caught.value)
        if state in ("done", "cancelled"):
            assert "place a new order" in message
        else:
            assert "it may" in message
    else:
        assert lifecycle.order_step(state, action) == expected


def test_order_effects() -> None:
    install = lifecycle.order_effect("install", "done")
    assert install.device_action == "install" and install.link_user
    uninstall = lifecycle.order_effect("uninstall", "done")
    assert uninstall.device_action == "remove" and uninstall.unlink_user
    repair = lifecycle.order_effect("repair", "done")
    assert repair.device_action == "repair" and repair.repair_fault
    assert lifecycle.order_effect("install", "cancelled").device_action == "unorder"
    for kind in ("configure", "train"):
        assert lifecycle.order_effect(kind, "done") == lifecycle.OrderEffect()
    assert lifecycle.order_effect("install", "accepted") == lifecycle.OrderEffect()


def test_a_device_walks_its_life_and_nothing_skips_a_step() -> None:
    status = "in_stock"
    for action, expected in (
        ("order", "ordered"),
        ("install", "installed"),
        ("activate", "active"),
        ("fault", "faulty"),
        ("repair", "active"),
        ("remove", "removed"),
        ("restock", "in_stock"),
    ):
        status = lifecycle.device_step(status, action)
        assert status == expected
    for status, action in (
        ("in_stock", "activate"),
        ("in_stock", "remove"),
        ("removed", "install"),
        ("ordered", "activate"),
        ("faulty", "activate"),
        ("removed", "fault"),
    ):
        with pytest.raises(RuleError, match=f"a device that is {status} cannot {action}"):
            lifecycle.device_step(status, action)


def test_decision_steps() -> None:
    assert lifecycle.decision_step("applied", "grant") == "granted"
    assert lifecycle.decision_step("applied", "refuse") == "refused"
    assert lifecycle.decision_step("granted", "end") == "ended"
    with pytest.raises(RuleError, match="from granted you may end"):
        lifecycle.decision_step("granted", "grant")
    with pytest.raises(RuleError, match=r"refused cannot grant$"):
        lifecycle.decision_step("refused", "grant")


@pytest.mark.parametrize(
    ("status", "valid_from", "valid_to", "today", "valid"),
    [
        ("granted", date(2026, 12, 1), None, date(2026, 12, 1), True),
        ("granted", date(2026, 12, 1), date(2026, 12, 31), date(2026, 12, 31), True),
        ("granted", date(2026, 12, 1), date(2026, 12, 31), date(2027, 1, 1), False),
        ("granted", date(2026, 12, 2), None, date(2026, 12, 1), False),
        ("applied", date(2026, 12, 1), None, date(2026, 12, 1), False),
        ("ended", date(2026, 1, 1), None, date(2026, 12, 1), False),
        ("granted", None, None, date(2026, 12, 1), False),
    ],
)
def test_a_valid_decision(
    status: str, valid_from: date | None, valid_to: date | None, today: date, valid: bool
) -> None:
    facts = DecisionFacts(status, valid_from, valid_to)
    assert lifecycle.has_valid_decision([facts], today) is valid
    assert lifecycle.has_valid_decision([], today) is False
