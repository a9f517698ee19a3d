-- The first schema of the SQLite store. Times are unix microseconds, always given by the caller
-- (`now`), never read from SQLite's clock. The `state` of a delivery (the core's serde JSON) is
-- the truth; the other columns of `deliveries` are projections of it, written in the same
-- statement, for claiming, indexes and reports.

-- Counters and settings shared by every process on the file.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value ANY
) STRICT, WITHOUT ROWID;

INSERT INTO meta (name, value) VALUES
    -- The last delivery id handed out (ids stay unique across processes and prunes).
    ('next_delivery_id', 0),
    -- Bumped by every change to `postbacks` or the precedence, so a process may cache the
    -- registry and check it in the same transaction.
    ('registry_version', 0),
    -- The registry's precedence (serde JSON of `postback::registry::Precedence`).
    ('precedence', '"override"');

-- One row per delivery.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,   -- the core's DeliveryId
    key              TEXT    NOT NULL UNIQUE, -- DeliveryKey::to_text()
    postback         INTEGER NOT NULL,
    trigger          TEXT    NOT NULL,
    purpose          TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('scheduled', 'held', 'delivered', 'gave_up')),
    -- Scheduled only: the next attempt's time, or the end of the lease of a claim.
    due_at           INTEGER,
    -- Claims so far: the fencing token of the latest.
    claims           INTEGER NOT NULL DEFAULT 0,
    -- Completions and unclaims: claims - settled at a claim are the interrupted ones.
    settled          INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    -- How many of the state's attempts are in `attempts` already.
    attempts_written INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    state            TEXT    NOT NULL
) STRICT;

-- The claim: the earliest due scheduled deliveries.
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE status = 'scheduled';
-- A postback's deliveries by where they stand (queries, pause, enable, delete).
CREATE INDEX deliveries_postback ON deliveries (postback, status);
-- Retention of delivered rows.
CREATE INDEX deliveries_delivered ON deliveries (finished_at) WHERE status = 'delivered';

-- Append-only: every attempt, kept after the delivery finished (and after it was pruned) until
-- retention removes it.
CREATE TABLE attempts (
    id       INTEGER PRIMARY KEY,
    delivery TEXT    NOT NULL,  -- the delivery's key
    number   INTEGER NOT NULL,
    postback INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    json     TEXT    NOT NULL
) STRICT;

CREATE INDEX attempts_delivery ON attempts (delivery);
CREATE INDEX attempts_at ON attempts (at);

-- The registry: one row per postback (serde JSON of `postback::model::Postback`).
CREATE TABLE postbacks (
    id      INTEGER PRIMARY KEY,
    partner INTEGER,
    status  TEXT    NOT NULL,
    json    TEXT    NOT NULL
) STRICT;

-- A postback's delivery health (serde JSON of `postback::delivery::Health`).
CREATE TABLE health (
    postback INTEGER PRIMARY KEY,
    json     TEXT    NOT NULL
) STRICT;

-- The audit trail (serde JSON of `postback::access::AuditEntry`).
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY,
    postback INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    json     TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_postback ON audit (postback, id);

-- Messages for the network's manager (serde JSON of `postback_store::Notification`).
CREATE TABLE notifications (
    id       INTEGER PRIMARY KEY,
    postback INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    json     TEXT    NOT NULL,
    done_at  INTEGER
) STRICT;

CREATE INDEX notifications_pending ON notifications (id) WHERE done_at IS NULL;
