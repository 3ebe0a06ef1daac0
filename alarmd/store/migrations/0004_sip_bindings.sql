-- SIP registrar bindings (issue 5): where each SCAIP device said it can be reached, so a
-- restart between REGISTER and the alarm still delivers the <mrs> to the registered contact.
-- One row per address-of-record; REGISTER replaces it, expires=0 deletes it.
CREATE TABLE sip_bindings (
    aor        TEXT    PRIMARY KEY,         -- "sip:123456@host" as the To header named it
    username   TEXT    NOT NULL,            -- the Digest user that registered it
    contact    TEXT    NOT NULL,            -- the Contact URI
    transport  TEXT    NOT NULL,            -- udp, tcp, tls: how the REGISTER arrived
    host       TEXT    NOT NULL,            -- the REGISTER's source address (rport/received)
    port       INTEGER NOT NULL,
    expires_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
CREATE INDEX sip_bindings_username ON sip_bindings (username);
