-- The first schema of the PostgreSQL store: the SQLite store's, in PostgreSQL types. Times are
-- unix microseconds (BIGINT), always given by the caller (`now`), never read from the server's
-- clock, rounded as the SQLite store rounds them. The `state` of a delivery (the core's serde
-- JSON, as JSONB) is the truth; the other columns of `deliveries` are projections of it,
-- written in the same statement, for claiming, indexes and reports.

-- The registry's version and precedence: one row. Every change to `postbacks` or the precedence
-- bumps `version` under this row's lock, so a process may cache the registry and check it in
-- the same transaction.
CREATE TABLE registry_meta (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version    BIGINT  NOT NULL DEFAULT 0,
    -- serde JSON of `postback::registry::Precedence`.
    precedence JSONB   NOT NULL DEFAULT '"override"'
);

INSERT INTO registry_meta DEFAULT VALUES;

-- Delivery ids, unique across every process on the database and across prunes.
CREATE SEQUENCE delivery_ids AS BIGINT MINVALUE 1;

-- One row per delivery.
CREATE TABLE deliveries (
    id               BIGINT PRIMARY KEY,   -- the core's DeliveryId
    key              TEXT   NOT NULL UNIQUE, -- DeliveryKey::to_text()
    postback         BIGINT NOT NULL,
    trigger          TEXT   NOT NULL,
    purpose          TEXT   NOT NULL,
    status           TEXT   NOT NULL
        CHECK (status IN ('scheduled', 'held', 'delivered', 'gave_up')),
    -- Scheduled only: the next attempt's time, or the end of the lease of a claim.
    due_at           BIGINT,
    -- Claims so far: the fencing token of the latest.
    claims           BIGINT NOT NULL DEFAULT 0,
    -- Completions and unclaims: claims - settled at a claim are the interrupted ones.
    settled          BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    -- How many of the state's attempts are in `attempts` already.
    attempts_written BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    state            JSONB  NOT NULL
);

-- The claim: the earliest due scheduled deliveries.
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE status = 'scheduled';
-- A postback's deliveries by where they stand (queries, pause, enable, delete).
CREATE INDEX deliveries_postback ON deliveries (postback, status);
-- Retention of delivered rows.
CREATE INDEX deliveries_delivered ON deliveries (finished_at) WHERE status = 'delivered';

-- Append-only: every attempt, kept after the delivery finished (and after it was pruned) until
-- retention removes it.
CREATE TABLE attempts (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery TEXT   NOT NULL,  -- the delivery's key
    number   BIGINT NOT NULL,
    postback BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    json     JSONB  NOT NULL
);

CREATE INDEX attempts_delivery ON attempts (delivery);
CREATE INDEX attempts_at ON attempts (at);

-- The registry: one row per postback (serde JSON of `postback::model::Postback`).
CREATE TABLE postbacks (
    id      BIGINT PRIMARY KEY,
    partner BIGINT,
    status  TEXT   NOT NULL,
    json    JSONB  NOT NULL
);

-- A postback's delivery health (serde JSON of `postback::delivery::Health`).
CREATE TABLE health (
    postback BIGINT PRIMARY KEY,
    json     JSONB  NOT NULL
);

-- The audit trail (serde JSON of `postback::access::AuditEntry`).
CREATE TABLE audit (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    postback BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    json     JSONB  NOT NULL
);

CREATE INDEX audit_postback ON audit (postback, id);

-- Messages for the network's manager (serde JSON of `postback_store::Notification`).
CREATE SEQUENCE notification_ids AS BIGINT MINVALUE 1;

CREATE TABLE notifications (
    id       BIGINT PRIMARY KEY,
    postback BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    json     JSONB  NOT NULL,
    done_at  BIGINT
);

CREATE INDEX notifications_pending ON notifications (id) WHERE done_at IS NULL;
