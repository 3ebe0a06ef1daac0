-- Who read or changed whose personal data, when and why (DESIGN.md invariant 7). Written by
-- the API for every read of a service user's record or a case; never updated or deleted by
-- alarmd itself.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY,
    at       TEXT    NOT NULL,
    actor    TEXT    NOT NULL,              -- the API token's name
    role     TEXT    NOT NULL,
    action   TEXT    NOT NULL,              -- "read_user", "read_case"
    subject  TEXT    NOT NULL,              -- "user:<tenant>/<ref>", "case:<id>"
    reason   TEXT    NOT NULL DEFAULT ''    -- why: the case it was read for ("case:12")
);
CREATE INDEX audit_subject ON audit (subject, at);
CREATE INDEX audit_actor ON audit (actor, at);
