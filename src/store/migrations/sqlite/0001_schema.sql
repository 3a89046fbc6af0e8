-- The hub's schema on SQLite. Times are microseconds since the Unix epoch;
-- names are compared byte-wise, as on PostgreSQL (COLLATE "C").

-- The hub's identity, the secret its page tokens are signed with, and the
-- feed's ends: `feed_seq` is the position of the newest change; a cursor
-- below `purge_horizon` may have missed a purged tombstone.
CREATE TABLE hub (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    hub_id TEXT NOT NULL,
    token_key BLOB NOT NULL,
    feed_seq INTEGER NOT NULL DEFAULT 0,
    purge_horizon INTEGER NOT NULL DEFAULT 0
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

-- CAs that partners bring: each vouches only for the partner it is
-- registered on, which is why a CA (by fingerprint) belongs to one partner.
CREATE TABLE partner_cas (
    fingerprint TEXT PRIMARY KEY,
    partner TEXT NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    pem TEXT NOT NULL
);
CREATE INDEX partner_cas_partner ON partner_cas (partner);

-- One row per record; body is the whole record, prost-encoded. The unique
-- index on name also serves lists ordered by name.
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
CREATE INDEX records_by_owner ON records (owner, kind, create_time, name);
-- The restricted records (AMBER, AMBER_STRICT, RED), whose visibility
-- depends on the caller.
CREATE INDEX records_restricted ON records (id) WHERE tlp IN (3, 4, 5);

-- Partners that may see an AMBER, AMBER_STRICT or RED record.
CREATE TABLE record_recipients (
    record INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    partner TEXT NOT NULL,
    PRIMARY KEY (record, partner)
) WITHOUT ROWID;
CREATE INDEX record_recipients_by_partner ON record_recipients (partner, record);

-- Filterable values: one row per scalar, repeated element and label,
-- clustered on its key (filters look values up per record and field). A
-- value that is not text has str = '', one that is not a number num = 0:
-- each field has one type, so filters never confuse them.
CREATE TABLE record_attrs (
    record INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    str TEXT NOT NULL,
    num INTEGER NOT NULL,
    PRIMARY KEY (record, field, str, num)
) WITHOUT ROWID;

-- The change log, compacted as it is written: one row per record holding
-- its latest change at its feed position. A tombstone (deleted = 1) names
-- no record row (its id may be reused) and stays until the retention
-- purges it.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    commit_time INTEGER NOT NULL,
    -- Until when every partner could see the record (CLEAR or GREEN):
    -- NULL if never, 9223372036854775807 while it still is.
    public_until INTEGER,
    -- The record's row; NULL for a tombstone.
    record INTEGER,
    -- The change at which the partners that saw the record while it was
    -- public lost sight of it, and whether it was a delete.
    public_lost_at INTEGER,
    public_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX changes_by_kind ON changes (kind, seq);
-- Only tombstones are looked up by time, to purge them.
CREATE INDEX changes_tombstones ON changes (commit_time) WHERE deleted = 1;

-- Partners that see a restricted record (`lost_at` NULL), or at which
-- change they stopped (`lost_at`, `lost_time`, and whether that change
-- `deleted` it): the feed tells a caller once, when its cursor is before
-- `lost_at`, and nothing of later edits. Rows exist only while the record
-- is restricted; `changes` says the same of partners that saw it public.
CREATE TABLE record_audience (
    name TEXT NOT NULL,
    partner TEXT NOT NULL,
    lost_at INTEGER,
    lost_time INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, partner)
) WITHOUT ROWID;
-- Rows of partners that lost sight are pruned once the purge horizon
-- passes them (no cursor before it is taken).
CREATE INDEX record_audience_lost ON record_audience (lost_at) WHERE lost_at IS NOT NULL;

-- Answers of BatchUpsertRecords by request_id, kept 24 hours.
CREATE TABLE batch_requests (
    partner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    response BLOB NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (partner, request_id)
) WITHOUT ROWID;
CREATE INDEX batch_requests_by_time ON batch_requests (create_time);

-- The audit log: every mutation (written in its transaction) and every
-- denied call.
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY,
    event_time INTEGER NOT NULL,
    partner TEXT NOT NULL,
    certificate_fingerprint TEXT NOT NULL,
    method TEXT NOT NULL,
    resource TEXT NOT NULL,
    code INTEGER NOT NULL,
    request_id TEXT NOT NULL
);
CREATE INDEX audit_events_by_partner ON audit_events (partner, id);
