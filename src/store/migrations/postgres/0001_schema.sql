-- The hub's schema on PostgreSQL. Times are microseconds since the Unix
-- epoch. Names and ordering compare byte-wise (COLLATE "C"), as in SQLite,
-- so lists order the same on both backends.

-- The hub's identity, the secret its page tokens are signed with, and the
-- feed's ends. Writers take feed positions by updating this row, which
-- holds its lock until they commit: positions become visible in the order
-- they were handed out, so the feed has no gaps. A cursor below
-- `purge_horizon` may have missed a purged tombstone.
CREATE TABLE hub (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    hub_id TEXT NOT NULL,
    token_key BYTEA NOT NULL,
    feed_seq BIGINT NOT NULL DEFAULT 0,
    purge_horizon BIGINT NOT NULL DEFAULT 0
);
INSERT INTO hub (singleton, hub_id, token_key)
VALUES (
    1,
    replace(gen_random_uuid()::text, '-', ''),
    decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')
);

CREATE TABLE partners (
    id TEXT COLLATE "C" PRIMARY KEY,
    uid TEXT NOT NULL,
    display_name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    -- Role numbers, comma separated, sorted.
    roles TEXT NOT NULL,
    state INTEGER NOT NULL,
    etag TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);

-- SPIFFE IDs and certificate fingerprints registered on partners.
CREATE TABLE partner_identities (
    identity TEXT PRIMARY KEY,
    partner TEXT COLLATE "C" NOT NULL REFERENCES partners (id) ON DELETE CASCADE
);
CREATE INDEX partner_identities_partner ON partner_identities (partner);

-- CAs that partners bring: each vouches only for the partner it is
-- registered on, which is why a CA (by fingerprint) belongs to one partner.
CREATE TABLE partner_cas (
    fingerprint TEXT PRIMARY KEY,
    partner TEXT COLLATE "C" NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    pem TEXT NOT NULL
);
CREATE INDEX partner_cas_partner ON partner_cas (partner);

-- One row per record; body is the whole record, prost-encoded. Rows up to
-- 8 KB stay inline and uncompressed: at the default target of 2 KB larger
-- records were compressed on every write and decompressed on every read.
CREATE TABLE records (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    record_id TEXT NOT NULL,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    uid TEXT NOT NULL,
    etag TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    tlp INTEGER NOT NULL,
    title TEXT COLLATE "C" NOT NULL,
    body BYTEA NOT NULL
) WITH (toast_tuple_target = 8160);
CREATE INDEX records_by_create_time ON records (kind, create_time, name);
CREATE INDEX records_by_update_time ON records (kind, update_time, name);
CREATE INDEX records_by_title ON records (kind, title, name);
CREATE INDEX records_by_owner ON records (owner, kind, create_time, name);
-- The restricted records (AMBER, AMBER_STRICT, RED), whose visibility
-- depends on the caller.
CREATE INDEX records_restricted ON records (id) WHERE tlp IN (3, 4, 5);

-- Partners that may see an AMBER, AMBER_STRICT or RED record.
CREATE TABLE record_recipients (
    record BIGINT NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    partner TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (record, partner)
);
CREATE INDEX record_recipients_by_partner ON record_recipients (partner, record);

-- Filterable values: one row per scalar, repeated element and label. A
-- value that is not text has str = '', one that is not a number num = 0:
-- each field has one type, so filters never confuse them.
CREATE TABLE record_attrs (
    record BIGINT NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    field TEXT COLLATE "C" NOT NULL,
    str TEXT COLLATE "C" NOT NULL,
    num BIGINT NOT NULL,
    PRIMARY KEY (record, field, str, num)
);
CREATE INDEX record_attrs_by_str ON record_attrs (field, str);
CREATE INDEX record_attrs_by_num ON record_attrs (field, num);

-- The change log, compacted as it is written: one row per record holding
-- its latest change at its feed position. A tombstone (deleted) names no
-- record row (its id may be reused) and stays until the retention purges
-- it.
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    deleted BOOLEAN NOT NULL,
    commit_time BIGINT NOT NULL,
    -- Until when every partner could see the record (CLEAR or GREEN):
    -- NULL if never, 9223372036854775807 while it still is.
    public_until BIGINT,
    -- The record's row; NULL for a tombstone.
    record BIGINT,
    -- The change at which the partners that saw the record while it was
    -- public lost sight of it, and whether it was a delete.
    public_lost_at BIGINT,
    public_deleted BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX changes_by_kind ON changes (kind, seq);
-- Only tombstones are looked up by time, to purge them.
CREATE INDEX changes_tombstones ON changes (commit_time) WHERE deleted;

-- Partners that see a restricted record (`lost_at` NULL), or at which
-- change they stopped (`lost_at`, `lost_time`, and whether that change
-- `deleted` it): the feed tells a caller once, when its cursor is before
-- `lost_at`, and nothing of later edits. Rows exist only while the record
-- is restricted; `changes` says the same of partners that saw it public.
CREATE TABLE record_audience (
    name TEXT COLLATE "C" NOT NULL,
    partner TEXT COLLATE "C" NOT NULL,
    lost_at BIGINT,
    lost_time BIGINT,
    deleted BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (name, partner)
);
-- Rows of partners that lost sight are pruned once the purge horizon
-- passes them (no cursor before it is taken).
CREATE INDEX record_audience_lost ON record_audience (lost_at) WHERE lost_at IS NOT NULL;

-- Answers of BatchUpsertRecords by request_id, kept 24 hours.
CREATE TABLE batch_requests (
    partner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    response BYTEA NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (partner, request_id)
);
CREATE INDEX batch_requests_by_time ON batch_requests (create_time);

-- The audit log: every mutation (written in its transaction) and every
-- denied call.
CREATE TABLE audit_events (
    id BIGSERIAL PRIMARY KEY,
    event_time BIGINT NOT NULL,
    partner TEXT COLLATE "C" NOT NULL,
    certificate_fingerprint TEXT NOT NULL,
    method TEXT NOT NULL,
    resource TEXT COLLATE "C" NOT NULL,
    code INTEGER NOT NULL,
    request_id TEXT NOT NULL
);
CREATE INDEX audit_events_by_partner ON audit_events (partner, id);
