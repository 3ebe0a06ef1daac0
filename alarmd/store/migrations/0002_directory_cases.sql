-- The directory (who is who), cases (one alarm situation for one user), their log, and the
-- outbox of notifications. Times are ISO 8601 UTC text, as in 0001.
--
-- Person ids used in case state, case_log.actor and outbox.person are text:
--   "staff:<staff.id>"  a member of home care, a supplier desk... (the staff table)
--   "contact:<contacts.id>"  next of kin or a neighbour from a user's plan
--   "operator:<token name>"  an operator or supervisor at the centre (API token name)

CREATE TABLE tenants (
    id          TEXT    PRIMARY KEY,            -- slug, e.g. "vestby"
    name        TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

CREATE TABLE service_users (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL REFERENCES tenants (id),
    ref         TEXT    NOT NULL,               -- the municipality's own reference
    first_name  TEXT    NOT NULL,
    last_name   TEXT    NOT NULL,
    address     TEXT    NOT NULL DEFAULT '',
    postcode    TEXT    NOT NULL DEFAULT '',
    phone       TEXT    NOT NULL DEFAULT '',
    user_group  TEXT,                           -- a routing group, e.g. "dementia"
    location    TEXT    NOT NULL DEFAULT 'home' CHECK (location IN ('home', 'away', 'care_home')),
    active      INTEGER NOT NULL DEFAULT 1,
    updated_at  TEXT    NOT NULL,
    UNIQUE (tenant, ref)
);

CREATE TABLE contacts (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES service_users (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,               -- 1 is called first
    name        TEXT    NOT NULL,
    relation    TEXT    NOT NULL DEFAULT '',    -- "daughter", "neighbour"...
    phone       TEXT    NOT NULL DEFAULT '',
    has_key     INTEGER NOT NULL DEFAULT 0,
    channels    TEXT    NOT NULL DEFAULT '{}',  -- JSON {"sms": "+4799999999", "webhook": "name"}
    UNIQUE (user_id, position)
);

CREATE TABLE devices (
    id             INTEGER PRIMARY KEY,
    tenant         TEXT    NOT NULL REFERENCES tenants (id),
    user_id        INTEGER REFERENCES service_users (id) ON DELETE SET NULL,
    protocol       TEXT    NOT NULL,            -- "dc09", "scaip", "mqtt", "sms"
    identity       TEXT    NOT NULL,            -- DC-09 account, SCAIP cid, MQTT id, phone
    device_type    TEXT    NOT NULL DEFAULT '', -- "safety_alarm", "fall_detector"...
    device_group   INTEGER NOT NULL DEFAULT 1 CHECK (device_group IN (1, 3)),
    supervision_s  INTEGER,                     -- expected heartbeat interval, if any
    updated_at     TEXT    NOT NULL,
    UNIQUE (protocol, identity)
);
CREATE INDEX devices_user ON devices (user_id);

CREATE TABLE response_plans (
    user_id        INTEGER PRIMARY KEY REFERENCES service_users (id) ON DELETE CASCADE,
    version        INTEGER NOT NULL DEFAULT 1,
    instructions   TEXT    NOT NULL DEFAULT '',
    key_box        TEXT    NOT NULL DEFAULT '', -- key-box information: sensitive
    home_care_team TEXT,                        -- teams.ref within the user's tenant
    mode_override  TEXT CHECK (mode_override IN ('response', 'routing', 'routing_with_backup')),
    updated_at     TEXT    NOT NULL,
    updated_by     TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE staff (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL REFERENCES tenants (id),
    ref         TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL DEFAULT 'home_care',
    channels    TEXT    NOT NULL DEFAULT '{}',  -- JSON {"sms": "+47...", "mqtt": "ref", ...}
    active      INTEGER NOT NULL DEFAULT 1,
    updated_at  TEXT    NOT NULL,
    UNIQUE (tenant, ref)
);

CREATE TABLE teams (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL REFERENCES tenants (id),
    ref         TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    UNIQUE (tenant, ref)
);

CREATE TABLE team_members (
    team_id     INTEGER NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    staff_id    INTEGER NOT NULL REFERENCES staff (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL DEFAULT 0,     -- order within the team
    on_duty     INTEGER NOT NULL DEFAULT 1,     -- staff sign on and off their shift
    PRIMARY KEY (team_id, staff_id)
);

-- A case: one alarm situation for one user (or one unregistered source). The policy and
-- plan that applied are copied in when it is routed (DESIGN.md invariant 4); escalation is
-- the stored state of routing/escalation.py; next_step_at is the deadline the engine sleeps
-- on (NULL: nothing due).
CREATE TABLE cases (
    id             INTEGER PRIMARY KEY,
    tenant         TEXT,                        -- NULL: unregistered source, every operator sees it
    user_id        INTEGER REFERENCES service_users (id),
    open_key       TEXT    NOT NULL,            -- "user:<id>|<kind>" or "src:<protocol>:<source>|<kind>"
    protocol       TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    category       TEXT    NOT NULL,
    queue          TEXT    NOT NULL DEFAULT 'alarm' CHECK (queue IN ('alarm', 'technical')),
    priority       INTEGER NOT NULL,
    flags          TEXT    NOT NULL DEFAULT '',
    state          TEXT    NOT NULL,            -- escalation.Phase value
    mode           TEXT,                        -- set when routed
    rule           TEXT,                        -- the route that matched
    policy         TEXT,                        -- JSON snapshot of the escalation policy
    plan           TEXT,                        -- JSON snapshot of the response plan
    escalation     TEXT,                        -- JSON of the escalation state (not the policy)
    next_step_at   TEXT,
    accepted_by    TEXT,
    opened_at      TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL,
    closed_at      TEXT,
    outcome        TEXT,
    close_note     TEXT,
    first_event_id INTEGER NOT NULL REFERENCES events (id),
    event_count    INTEGER NOT NULL DEFAULT 1,
    version        INTEGER NOT NULL DEFAULT 1   -- bumped on every change (API concurrency)
);
CREATE UNIQUE INDEX cases_open_key ON cases (open_key) WHERE closed_at IS NULL;
CREATE INDEX cases_due ON cases (next_step_at) WHERE next_step_at IS NOT NULL;
CREATE INDEX cases_open ON cases (tenant, state) WHERE closed_at IS NULL;
CREATE INDEX cases_user ON cases (user_id, opened_at);

ALTER TABLE events ADD COLUMN case_id INTEGER REFERENCES cases (id);

CREATE TABLE case_log (
    id          INTEGER PRIMARY KEY,
    case_id     INTEGER NOT NULL REFERENCES cases (id),
    at          TEXT    NOT NULL,
    actor       TEXT    NOT NULL,               -- a person id, or "alarmd"
    type        TEXT    NOT NULL,               -- opened, routed, notify, accepted, note, ...
    message     TEXT    NOT NULL,
    data        TEXT    NOT NULL DEFAULT '{}'   -- JSON
);
CREATE INDEX case_log_case ON case_log (case_id, id);

-- Notifications to send, drained by notify/; a row is written in the same transaction as
-- the case change that causes it, so a crash can neither lose nor invent one.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    case_id         INTEGER REFERENCES cases (id),
    channel         TEXT    NOT NULL,           -- "webhook", "sms", "mqtt"
    person          TEXT    NOT NULL,           -- person id (see the top of this file)
    address         TEXT    NOT NULL,           -- phone number, webhook name, MQTT staff id
    payload         TEXT    NOT NULL,           -- JSON
    dedup_key       TEXT    NOT NULL UNIQUE,    -- the same notification is never queued twice
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    sent_at         TEXT,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';

ALTER TABLE api_tokens ADD COLUMN person TEXT;  -- the person id a staff member's token acts as
