-- The whole schema for PostgreSQL, in one step (the SQLite history needs
-- three). Names and ordering compare byte-wise (COLLATE "C"), as in SQLite,
-- so lists order the same on both backends.

CREATE TABLE hub (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    hub_id TEXT NOT NULL,
    token_key BYTEA NOT NULL,
    -- Position of the newest change. Writers take positions by updating this
    -- row, which holds its lock until they commit: positions become visible
    -- in the order they were handed out, so the feed has no gaps.
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
    roles TEXT NOT NULL,
    state INTEGER NOT NULL,
    etag TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);

CREATE TABLE partner_identities (
    identity TEXT PRIMARY KEY,
    partner TEXT COLLATE "C" NOT NULL REFERENCES partners (id) ON DELETE CASCADE
);
CREATE INDEX partner_identities_partner ON partner_identities (partner);

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
);
CREATE INDEX records_by_create_time ON records (kind, create_time, name);
CREATE INDEX records_by_update_time ON records (kind, update_time, name);
CREATE INDEX records_by_title ON records (kind, title, name);
CREATE INDEX records_by_owner ON records (owner, kind, create_time, name);

CREATE TABLE record_recipients (
    record BIGINT NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    partner TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (record, partner)
);
CREATE INDEX record_recipients_by_partner ON record_recipients (partner, record);

-- Filter values; a value that is not text has str = '', one that is not a
-- number num = 0 (each field has one type, so filters never confuse them).
CREATE TABLE record_attrs (
    record BIGINT NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    field TEXT COLLATE "C" NOT NULL,
    str TEXT COLLATE "C" NOT NULL,
    num BIGINT NOT NULL,
    PRIMARY KEY (record, field, str, num)
);
CREATE INDEX record_attrs_by_str ON record_attrs (field, str);
CREATE INDEX record_attrs_by_num ON record_attrs (field, num);

-- The change log, compacted as it is written (see the SQLite migrations).
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    deleted BOOLEAN NOT NULL,
    commit_time BIGINT NOT NULL,
    public_until BIGINT
);
CREATE INDEX changes_by_kind ON changes (kind, seq);
CREATE INDEX changes_tombstones ON changes (commit_time) WHERE deleted;

CREATE TABLE record_audience (
    name TEXT COLLATE "C" NOT NULL,
    partner TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (name, partner)
);

CREATE TABLE batch_requests (
    partner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    response BYTEA NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (partner, request_id)
);
CREATE INDEX batch_requests_by_time ON batch_requests (create_time);
