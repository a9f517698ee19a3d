-- name: lock
-- The postback's lock, held to the end of the transaction: a completion, a management operation
-- and the disable they may cause take it first, so they serialize per postback (one disablement
-- however many fail at once) and always in one order (no deadlocks). The schema's name keeps
-- stores in other schemas of the database apart.
SELECT pg_advisory_xact_lock(hashtext(current_schema()), $1::int4);

-- name: get
SELECT json::text FROM health WHERE postback = $1;

-- name: get_for_update
SELECT json::text FROM health WHERE postback = $1 FOR UPDATE;

-- name: upsert
INSERT INTO health (postback, json) VALUES ($1, $2::text::jsonb)
ON CONFLICT (postback) DO UPDATE SET json = excluded.json;

-- name: delete
DELETE FROM health WHERE postback = $1;

-- name: lock_many
-- Several postbacks' locks ($1 their keys, sorted, no repeats), taken in that order.
SELECT count(pg_advisory_xact_lock(hashtext(current_schema()), k))
FROM (SELECT k FROM unnest($1::int4[]) AS k ORDER BY k) AS keys;
