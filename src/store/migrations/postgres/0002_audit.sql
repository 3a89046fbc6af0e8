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
