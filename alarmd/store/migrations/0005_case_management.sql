-- Case management (issue 9): the service user's life cycle around the devices, from the
-- decision to de-installation. The domain rules (which transitions are allowed, what an
-- order's completion does to a device) live in alarmd/admin/; this file only keeps the
-- facts. Times are ISO 8601 UTC text as everywhere; dates (a decision's validity, the day
-- an order is scheduled for) are ISO dates, "2026-12-01", in the municipality's own
-- calendar (Europe/Oslo).

-- The life of a service user: active is "routing follows this user's plan". When the need
-- ceases, ended_at is set, and once the retention period after the last de-installation has
-- passed (erase_after), the personal data is erased (erased_at) and the row stays as an
-- anonymous anchor for the statistics of the user's cases.
ALTER TABLE service_users ADD COLUMN ended_at TEXT;
ALTER TABLE service_users ADD COLUMN erase_after TEXT;
ALTER TABLE service_users ADD COLUMN erased_at TEXT;
CREATE INDEX service_users_erase ON service_users (erase_after)
    WHERE erase_after IS NOT NULL AND erased_at IS NULL;

-- Suppliers: the companies that install and maintain devices, often for several
-- municipalities at once. A supplier's API token has role "supplier" and person
-- "supplier:<id>"; it sees only the orders and devices that name it.
CREATE TABLE suppliers (
    id          TEXT    PRIMARY KEY,            -- slug, e.g. "trygg-teknikk"
    name        TEXT    NOT NULL,
    email       TEXT    NOT NULL DEFAULT '',
    phone       TEXT    NOT NULL DEFAULT '',
    updated_at  TEXT    NOT NULL
);

-- The device registry: serial number, supplier and life-cycle status. Devices imported
-- before this migration are in service ("active"). Only installed, active and faulty
-- devices are supervised and route by their user's plan.
ALTER TABLE devices ADD COLUMN serial TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN supplier TEXT REFERENCES suppliers (id);
ALTER TABLE devices ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CHECK (status IN ('in_stock', 'ordered', 'installed', 'active', 'faulty', 'removed'));
ALTER TABLE devices ADD COLUMN status_at TEXT;
CREATE INDEX devices_supplier ON devices (supplier, status);

-- Every version of a response plan (with its contacts), so that "who changed what, when"
-- can be answered; response_plans keeps the current one and cases keep the version they
-- used in their snapshot.
CREATE TABLE response_plan_versions (
    user_id     INTEGER NOT NULL REFERENCES service_users (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    plan        TEXT    NOT NULL,               -- JSON: PlanSnapshot.to_json()
    changed     TEXT    NOT NULL DEFAULT '',    -- which parts changed: "instructions, contacts"
    changed_at  TEXT    NOT NULL,
    changed_by  TEXT    NOT NULL,
    PRIMARY KEY (user_id, version)
);

-- Decisions (vedtak): what service a user was granted, and for how long.
CREATE TABLE decisions (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL REFERENCES tenants (id),
    user_id     INTEGER NOT NULL REFERENCES service_users (id),
    service     TEXT    NOT NULL CHECK (service IN
                    ('safety_alarm', 'response_service', 'routing_service', 'sensor')),
    sensor_type TEXT,                           -- service "sensor": fall_detector, door...
    status      TEXT    NOT NULL CHECK (status IN ('applied', 'granted', 'refused', 'ended')),
    reference   TEXT    NOT NULL DEFAULT '',    -- the municipality's case number
    applied_at  TEXT,                           -- date of the application
    decided_at  TEXT,                           -- date of the decision
    valid_from  TEXT,                           -- date; granted decisions only
    valid_to    TEXT,                           -- date, inclusive; NULL: until ended
    ended_at    TEXT,
    note        TEXT    NOT NULL DEFAULT '',
    updated_at  TEXT    NOT NULL,
    updated_by  TEXT    NOT NULL
);
CREATE INDEX decisions_user ON decisions (user_id, status);

-- Technical faults: found by supervision (a technical case) or reported by anyone; each
-- becomes a repair order to the device's supplier.
CREATE TABLE faults (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL REFERENCES tenants (id),
    device_id   INTEGER NOT NULL REFERENCES devices (id),
    user_id     INTEGER REFERENCES service_users (id),
    case_id     INTEGER REFERENCES cases (id),  -- the technical case it was found in
    description TEXT    NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'repaired', 'cancelled')),
    reported_at TEXT    NOT NULL,
    reported_by TEXT    NOT NULL,
    resolved_at TEXT
);
CREATE INDEX faults_device ON faults (device_id, status);

-- Orders to a supplier: install, uninstall, repair, configure, train.
CREATE TABLE orders (
    id            INTEGER PRIMARY KEY,
    tenant        TEXT    NOT NULL REFERENCES tenants (id),
    supplier      TEXT    NOT NULL REFERENCES suppliers (id),
    kind          TEXT    NOT NULL CHECK (kind IN
                      ('install', 'uninstall', 'repair', 'configure', 'train')),
    state         TEXT    NOT NULL DEFAULT 'ordered' CHECK (state IN
                      ('ordered', 'accepted', 'scheduled', 'done', 'cancelled')),
    user_id       INTEGER REFERENCES service_users (id),
    device_id     INTEGER REFERENCES devices (id),
    fault_id      INTEGER REFERENCES faults (id),
    note          TEXT    NOT NULL DEFAULT '',
    ordered_at    TEXT    NOT NULL,
    ordered_by    TEXT    NOT NULL,
    accepted_at   TEXT,
    scheduled_for TEXT,                         -- date the supplier will come
    done_at       TEXT,
    cancelled_at  TEXT,
    result        TEXT    NOT NULL DEFAULT '',  -- the supplier's note on completion
    updated_at    TEXT    NOT NULL,
    version       INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX orders_supplier ON orders (supplier, state);
CREATE INDEX orders_tenant ON orders (tenant, state);

-- Deviations (avvik) for the municipality's quality system.
CREATE TABLE deviations (
    id            INTEGER PRIMARY KEY,
    tenant        TEXT    NOT NULL REFERENCES tenants (id),
    category      TEXT    NOT NULL CHECK (category IN ('late_response', 'device_failure',
                      'routing', 'communication', 'documentation', 'procedure', 'other')),
    description   TEXT    NOT NULL,
    case_id       INTEGER REFERENCES cases (id),
    fault_id      INTEGER REFERENCES faults (id),
    user_id       INTEGER REFERENCES service_users (id),
    registered_at TEXT    NOT NULL,
    registered_by TEXT    NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    closed_at     TEXT
);
CREATE INDEX deviations_tenant ON deviations (tenant, registered_at);
