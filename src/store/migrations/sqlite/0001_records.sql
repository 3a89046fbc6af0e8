-- The hub's identity and the secret its page tokens are signed with.
CREATE TABLE hub (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    hub_id TEXT NOT NULL,
    token_key BLOB NOT NULL
);
INSERT INTO hub (singleton, hub_id, token_key)
VALUES (1, lower(hex(randomblob(16))), randomblob(32));

CREATE TABLE partners (
    id TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    display_name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    -- Role numbers, comma separated, sorted.
    roles TEXT NOT NULL,
    state INTEGER NOT NULL,
    etag TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL
);

-- SPIFFE IDs and certificate fingerprints registered on partners.
CREATE TABLE partner_identities (
    identity TEXT PRIMARY KEY,
    partner TEXT NOT NULL REFERENCES partners (id) ON DELETE CASCADE
);
CREATE INDEX partner_identities_partner ON partner_identities (partner);

-- One row per record; body is the whole record, prost-encoded. Times are
-- microseconds since the Unix epoch.
CREATE TABLE records (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    record_id TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    uid TEXT NOT NULL,
    etag TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    tlp INTEGER NOT NULL,
    title TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX records_by_create_time ON records (kind, create_time, name);
CREATE INDEX records_by_update_time ON records (kind, update_time, name);
CREATE INDEX records_by_title ON records (kind, title, name);
CREATE INDEX records_by_name ON records (kind, name);
CREATE INDEX records_by_owner ON records (owner, kind, create_time, name);

-- Partners that may see an AMBER, AMBER_STRICT or RED record.
CREATE TABLE record_recipients (
    record INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    partner TEXT NOT NULL,
    PRIMARY KEY (record, partner)
) WITHOUT ROWID;
CREATE INDEX record_recipients_by_partner ON record_recipients (partner, record);

-- Filterable values: one row per scalar, repeated element and label.
CREATE TABLE record_attrs (
    record INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    str TEXT,
    num INTEGER
);
CREATE INDEX record_attrs_by_record ON record_attrs (record, field);
CREATE INDEX record_attrs_by_str ON record_attrs (field, str);
CREATE INDEX record_attrs_by_num ON record_attrs (field, num);
