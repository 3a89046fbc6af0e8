-- CAs that partners bring: each vouches only for the partner it is
-- registered on, which is why a CA (by fingerprint) belongs to one partner.
CREATE TABLE partner_cas (
    fingerprint TEXT PRIMARY KEY,
    partner TEXT NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    pem TEXT NOT NULL
);
CREATE INDEX partner_cas_partner ON partner_cas (partner);
