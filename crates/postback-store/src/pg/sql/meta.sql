-- name: load_registry
-- The registry in one statement (one snapshot): its version, precedence and every postback.
SELECT m.version, m.precedence::text, p.id, p.json::text
FROM registry_meta m LEFT JOIN postbacks p ON TRUE
ORDER BY p.id;

-- name: version
SELECT version FROM registry_meta;

-- name: lock_version
-- Taken by every writer of the registry before it reads it.
SELECT version FROM registry_meta FOR UPDATE;

-- name: set_precedence
UPDATE registry_meta SET precedence = $1::text::jsonb;

-- name: bump_registry_version
UPDATE registry_meta SET version = version + 1 RETURNING version;

-- name: next_delivery_id
SELECT nextval('delivery_ids');

-- name: wake
-- Wake the workers listening on this schema (sent when the transaction commits).
SELECT pg_notify('postback_store_wake', current_schema());
