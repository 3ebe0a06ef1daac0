"""Every Prometheus metric alarmd exports, defined in one place.

Names follow Prometheus conventions: ``alarmd_`` prefix, units in the name. Label values
are small fixed sets (protocol, transport, reply kind, a short reason): never an account,
a phone number or anything else that grows with the number of devices.

The registry is our own (not the global default) so tests and several daemons in one
process never collide; the API serves it on ``/metrics`` from the event loop.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

BUILD = Info("alarmd_build", "alarmd version", registry=REGISTRY)

# --- store -------------------------------------------------------------------------------
STORE_COMMIT_SECONDS = Histogram(
    "alarmd_store_commit_seconds",
    "Time to run and commit one group of writes (fsync included).",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
STORE_BATCH_JOBS = Histogram(
    "alarmd_store_batch_jobs",
    "Jobs committed together in one transaction (group commit).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
    registry=REGISTRY,
)
STORE_DEDUP_KEYS = Gauge(
    "alarmd_store_dedup_keys",
    "De-duplication keys held in memory: the events stored within the de-dup window.",
    registry=REGISTRY,
)
STORE_COMMIT_FAILURES = Counter(
    "alarmd_store_commit_failures_total",
    "Transactions that failed to commit; nothing in them was acknowledged.",
    registry=REGISTRY,
)

# --- intake ------------------------------------------------------------------------------
EVENTS_STORED = Counter(
    "alarmd_events_stored_total",
    "Events committed to the store, by protocol and category.",
    ["protocol", "category"],
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "alarmd_events_duplicate_total",
    "Retransmitted events recognised, acknowledged and not stored again.",
    ["protocol"],
    registry=REGISTRY,
)
EVENTS_UNREGISTERED = Counter(
    "alarmd_events_unregistered_total",
    "Events from a source no account or device is registered for (shown to operators).",
    ["protocol"],
    registry=REGISTRY,
)

# --- DC-09 -------------------------------------------------------------------------------
DC09_FRAMES = Counter(
    "alarmd_dc09_frames_total",
    "DC-09 frames received, by transport and the reply they got.",
    ["transport", "reply"],
    registry=REGISTRY,
)
DC09_REJECTED = Counter(
    "alarmd_dc09_rejected_total",
    "DC-09 input not accepted, by reason (crc, format, unknown_account_encrypted, ...).",
    ["reason"],
    registry=REGISTRY,
)
DC09_CONNECTIONS = Gauge(
    "alarmd_dc09_connections",
    "Open DC-09 TCP connections.",
    registry=REGISTRY,
)
DC09_CONNECTIONS_REFUSED = Counter(
    "alarmd_dc09_connections_refused_total",
    "DC-09 TCP connections closed at once because the connection limit was reached.",
    registry=REGISTRY,
)
ACK_LATENCY_SECONDS = Histogram(
    "alarmd_ack_latency_seconds",
    "From a complete frame received to its acknowledgement written, commit included.",
    ["protocol"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
UNACKED_STORE_FAILURE = Counter(
    "alarmd_unacknowledged_store_failure_total",
    "Frames left unacknowledged because the store could not commit (the device retries).",
    ["protocol"],
    registry=REGISTRY,
)

# --- cases and escalation ----------------------------------------------------------------
CASES_OPENED = Counter(
    "alarmd_cases_opened_total",
    "Cases opened, by category (alarm, technical).",
    ["category"],
    registry=REGISTRY,
)
CASES_ROUTED = Counter(
    "alarmd_cases_routed_total",
    "Cases routed, by the service mode chosen.",
    ["mode"],
    registry=REGISTRY,
)
CASES_CLOSED = Counter(
    "alarmd_cases_closed_total",
    "Cases closed, by outcome (resolved_by_phone counts as clarified at the centre).",
    ["outcome"],
    registry=REGISTRY,
)
CENTRE_ALERTS = Counter(
    "alarmd_centre_alerts_total",
    "Cases handed to the operators' pool (first) and re-alerts because nobody accepted (repeat).",
    ["kind"],
    registry=REGISTRY,
)
ESCALATION_LATENESS = Histogram(
    "alarmd_escalation_lateness_seconds",
    "How late a deadline (routing a new case, an escalation step) fired.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0),
    registry=REGISTRY,
)

# --- supervision ---------------------------------------------------------------------------
SUPERVISED_DEVICES = Gauge(
    "alarmd_supervised_devices",
    "Devices with an expected heartbeat interval.",
    registry=REGISTRY,
)
DEVICES_OVERDUE = Gauge(
    "alarmd_devices_overdue",
    "Supervised devices reported lost and not heard from since.",
    registry=REGISTRY,
)
OUTAGE_INCIDENTS_OPEN = Gauge(
    "alarmd_outage_incidents_open",
    "Mass-outage incidents open (many devices of one area silent at once).",
    registry=REGISTRY,
)
DETECTION_SECONDS = Histogram(
    "alarmd_supervision_detection_seconds",
    "From a lost device's last message to the moment it was reported lost.",
    buckets=(60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
    registry=REGISTRY,
)
OUTAGE_CASES_FOLDED = Counter(
    "alarmd_outage_cases_folded_total",
    "Technical cases (e.g. mains lost) folded into an outage incident instead of routed.",
    ["kind"],
    registry=REGISTRY,
)

# --- daemon ------------------------------------------------------------------------------
CONFIG_RELOAD_OK = Gauge(
    "alarmd_config_last_reload_successful",
    "1 if the last configuration (re)load succeeded; 0 if it failed and the old one is kept.",
    registry=REGISTRY,
)
CONFIG_HASH = Info(
    "alarmd_config",
    "Hash of the configuration files in force.",
    registry=REGISTRY,
)

# --- notify (alarmd/notify: the outbox dispatcher and its channels) --------------------
NOTIFICATIONS = Counter(
    "alarmd_notifications_total",
    "Notification outcomes recorded, by channel and result (sent, retry, failed).",
    ["channel", "result"],
    registry=REGISTRY,
)
NOTIFICATION_DELIVERY_SECONDS = Histogram(
    "alarmd_notification_delivery_seconds",
    "Time one delivery attempt took, success or not, by channel.",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "alarmd_outbox_pending",
    "Outbox rows waiting to be delivered (due now or waiting for a retry).",
    registry=REGISTRY,
)
# --- end of notify ---------------------------------------------------------------------
