"""The rules of case management, as pure functions: which step may follow which, for orders,
devices and decisions, and what finishing an order does to its device and fault.

Nothing here reads the clock or the store; the writer jobs in ``records.py`` load the row,
ask these functions, and write what they answer. Keeping the rules apart makes them easy to
read in one place (a municipality's administrator asks "why may I not ..." and the answer is
in this file) and to test as tables.

The words follow GLOSSARY.md: a *decision* (vedtak), an *order* (bestilling) to a
*supplier* (leverandør), a *fault* (teknisk feil), a *deviation* (avvik).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Literal, TypeAlias, get_args

__all__ = [
    "DEVIATION_CATEGORIES",
    "DEVICE_STATUSES",
    "LIVE_DEVICE_STATUSES",
    "ORDER_KINDS",
    "SERVICES",
    "DecisionStatus",
    "DeviationCategory",
    "DeviceStatus",
    "OrderAction",
    "OrderEffect",
    "OrderKind",
    "OrderState",
    "RuleError",
    "Service",
    "decision_step",
    "device_step",
    "has_valid_decision",
    "order_effect",
    "order_step",
]

Service: TypeAlias = Literal["safety_alarm", "response_service", "routing_service", "sensor"]
SERVICES: tuple[Service, ...] = get_args(Service)
DecisionStatus: TypeAlias = Literal["applied", "granted", "refused", "ended"]
DecisionAction: TypeAlias = Literal["grant", "refuse", "end"]

OrderKind: TypeAlias = Literal["install", "uninstall", "repair", "configure", "train"]
ORDER_KINDS: tuple[OrderKind, ...] = get_args(OrderKind)
OrderState: TypeAlias = Literal["ordered", "accepted", "scheduled", "done", "cancelled"]
OrderAction: TypeAlias = Literal["accept", "schedule", "done", "cancel"]

DeviceStatus: TypeAlias = Literal["in_stock", "ordered", "installed", "active", "faulty", "removed"]
DEVICE_STATUSES: tuple[DeviceStatus, ...] = get_args(DeviceStatus)
# A device in one of these is on the wall: it is supervised, and its alarms route by its
# user's plan. Every other device's alarms still reach the centre (never lost), as from a
# source without a user.
LIVE_DEVICE_STATUSES: frozenset[str] = frozenset({"installed", "active", "faulty"})
DeviceAction: TypeAlias = Literal[
    "order", "install", "activate", "fault", "repair", "remove", "restock", "unorder"
]

DeviationCategory: TypeAlias = Literal[
    "late_response",
    "device_failure",
    "routing",
    "communication",
    "documentation",
    "procedure",
    "other",
]
DEVIATION_CATEGORIES: tuple[DeviationCategory, ...] = get_args(DeviationCategory)


class RuleError(ValueError):
    """A step the rules do not allow; the message says why, in words an administrator
    understands, and what would be allowed instead."""


# --- decisions -------------------------------------------------------------------------------

_DECISION_STEPS: dict[tuple[str, str], DecisionStatus] = {
    ("applied", "grant"): "granted",
    ("applied", "refuse"): "refused",
    ("granted", "end"): "ended",
    ("applied", "end"): "ended",  # the application withdrawn
}


def decision_step(status: str, action: str) -> DecisionStatus:
    """The status a decision takes after ``action``, or ``RuleError``."""
    new = _DECISION_STEPS.get((status, action))
    if new is None:
        allowed = sorted(a for (s, a) in _DECISION_STEPS if s == status)
        hint = f"; from {status} you may {' or '.join(allowed)}" if allowed else ""
        raise RuleError(f"a decision that is {status} cannot {action}{hint}")
    return new


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    status: str
    valid_from: date | None
    valid_to: date | None


def has_valid_decision(decisions: Iterable[DecisionFacts], today: date) -> bool:
    """Whether any granted decision covers ``today`` (validity dates are inclusive). A user
    without one is flagged to the operators: the alarm is still handled, but somebody must
    find out why the service runs without a decision."""
    return any(
        d.status == "granted"
        and d.valid_from is not None
        and d.valid_from <= today
        and (d.valid_to is None or today <= d.valid_to)
        for d in decisions
    )


# --- orders ------------------------------------------------------------------------------------

_ORDER_STEPS: dict[tuple[str, str], OrderState] = {
    ("ordered", "accept"): "accepted",
    ("ordered", "schedule"): "scheduled",  # accepting and giving a date in one step
    ("accepted", "schedule"): "scheduled",
    ("scheduled", "schedule"): "scheduled",  # a new date
    ("ordered", "done"): "done",  # standalone systems the municipality installs itself
    ("accepted", "done"): "done",
    ("scheduled", "done"): "done",
    ("ordered", "cancel"): "cancelled",
    ("accepted", "cancel"): "cancelled",
    ("scheduled", "cancel"): "cancelled",
}
# The supplier works its orders; cancelling is the municipality's (or the centre's) call.
SUPPLIER_ACTIONS: frozenset[str] = frozenset({"accept", "schedule", "done"})


def order_step(state: str, action: str) -> OrderState:
    """The state an order takes after ``action``, or ``RuleError``."""
    new = _ORDER_STEPS.get((state, action))
    if new is None:
        if state in ("done", "cancelled"):
            raise RuleError(f"the order is {state}; place a new order instead")
        allowed = sorted(a for (s, a) in _ORDER_STEPS if s == state)
        raise RuleError(f"an order that is {state} cannot {action}; it may {' or '.join(allowed)}")
    return new


@dataclass(frozen=True, slots=True)
class OrderEffect:
    """What finishing or cancelling an order does besides its own state."""

    device_action: DeviceAction | None = None  # applied to the order's device
    link_user: bool = False  # the device now belongs to the order's user
    unlink_user: bool = False  # the device no longer belongs to anybody
    repair_fault: bool = False  # the order's fault is repaired


def order_effect(kind: str, new_state: str) -> OrderEffect:
    """The consequences of an order reaching ``new_state`` (only done and cancelled have
    any). An install that is done puts the device on the wall (installed: supervised and
    routing by the user's plan from now on); an uninstall takes it off; a repair makes the
    faulty device active again and the fault repaired."""
    if new_state == "done":
        if kind == "install":
            return OrderEffect(device_action="install", link_user=True)
        if kind == "uninstall":
            return OrderEffect(device_action="remove", unlink_user=True)
        if kind == "repair":
            return OrderEffect(device_action="repair", repair_fault=True)
    if new_state == "cancelled" and kind == "install":
        return OrderEffect(device_action="unorder")
    return OrderEffect()


# --- devices -----------------------------------------------------------------------------------

_DEVICE_STEPS: dict[tuple[str, str], DeviceStatus] = {
    ("in_stock", "order"): "ordered",
    ("removed", "order"): "ordered",
    ("ordered", "unorder"): "in_stock",
    ("ordered", "install"): "installed",
    ("in_stock", "install"): "installed",  # picked from the van on the day
    ("installed", "activate"): "active",
    ("installed", "fault"): "faulty",
    ("active", "fault"): "faulty",
    ("faulty", "fault"): "faulty",  # a second report of the same device
    ("faulty", "repair"): "active",
    ("active", "repair"): "active",  # repaired before anyone marked it faulty
    ("installed", "repair"): "installed",
    ("installed", "remove"): "removed",
    ("active", "remove"): "removed",
    ("faulty", "remove"): "removed",
    ("removed", "restock"): "in_stock",
}


def device_step(status: str, action: str) -> DeviceStatus:
    """The status a device takes after ``action``, or ``RuleError``."""
    new = _DEVICE_STEPS.get((status, action))
    if new is None:
        allowed = sorted(a for (s, a) in _DEVICE_STEPS if s == status)
        raise RuleError(
            f"a device that is {status} cannot {action}; it may {' or '.join(allowed) or 'nothing'}"
        )
    return new
