"""Notifications: the durable outbox's dispatcher (retry, backoff, give-up) and its channels.

The engine writes outbox rows in the same transaction as the case change that causes them
(``insert_outbox_rows``); the ``Dispatcher`` drains them through ``Channel``s (webhook here;
MQTT and SMS in their own modules) and records every outcome in the outbox and the case log.
"""

from alarmd.notify.outbox import (
    Channel,
    DeliveryError,
    Dispatcher,
    NewOutboxRow,
    OutboxItem,
    enqueue_job,
    insert_outbox_rows,
)

__all__ = [
    "Channel",
    "DeliveryError",
    "Dispatcher",
    "NewOutboxRow",
    "OutboxItem",
    "enqueue_job",
    "insert_outbox_rows",
]
