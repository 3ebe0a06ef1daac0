-- Events: append-only; one row per event a device reported, with the raw frame it came in.
-- Times are ISO 8601 UTC text with microseconds ("2026-01-15T12:00:00.000000Z"): they sort
-- as text, and a person reading the file with sqlite3 can read them.
CREATE TABLE events (
    id              INTEGER PRIMARY KEY,
    received_at     TEXT    NOT NULL,
    protocol        TEXT    NOT NULL,
    source          TEXT    NOT NULL,      -- DC-09 account, SCAIP cid, MQTT device id, phone number
    tenant          TEXT,                  -- NULL when the source is unregistered
    kind            TEXT    NOT NULL,
    category        TEXT    NOT NULL,
    condition       TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    code            TEXT    NOT NULL,
    zone            TEXT,
    partition       TEXT,
    occurred_at     TEXT,
    text            TEXT,
    flags           TEXT    NOT NULL DEFAULT '',   -- comma-separated model.Flag values
    attributes      TEXT    NOT NULL DEFAULT '{}', -- JSON object
    dedup_key       TEXT    NOT NULL,
    retransmissions INTEGER NOT NULL DEFAULT 0,    -- copies received after this one
    raw             BLOB    NOT NULL
);
CREATE INDEX events_dedup ON events (dedup_key, received_at);
CREATE INDEX events_source ON events (protocol, source, received_at);
CREATE INDEX events_received ON events (received_at);

-- API tokens: only a hash is kept; the token itself is shown once.
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    role        TEXT    NOT NULL,
    tenants     TEXT    NOT NULL DEFAULT '*',      -- comma-separated tenant slugs, or '*'
    token_hash  TEXT    NOT NULL UNIQUE,           -- sha256 hex of the token
    created_at  TEXT    NOT NULL,
    revoked_at  TEXT
);
