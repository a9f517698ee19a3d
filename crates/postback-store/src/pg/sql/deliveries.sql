-- name: insert
INSERT INTO deliveries (id, key, postback, trigger, purpose, status, due_at, claims, settled,
                        attempts_written, created_at, finished_at, state, revision)
VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, $8, $9, $10, $11::text::jsonb, $12);

-- name: exists
SELECT 1 FROM deliveries WHERE key = $1;

-- name: claim
-- $1 now, $2 limit, $3 the lease's end, $4 the owner. The CTE is MATERIALIZED so the planner
-- cannot fold it into the UPDATE and claim more than the limit; SKIP LOCKED lets claimants pass
-- each other's rows. RETURNING gives rows in no set order: the caller sorts by the due time the
-- CTE read.
WITH due AS MATERIALIZED (
    SELECT id, due_at FROM deliveries d
    WHERE status = 'scheduled' AND due_at <= $1
      -- A postback that is off has nothing claimed: a delivery left scheduled for it (out under
      -- a lease when it went off) waits until it is on again.
      AND (purpose = 'test'
           OR postback IN (SELECT id FROM postbacks WHERE status = 'active'))
      -- A correction waits behind the earlier revisions of its trigger to its postback.
      AND (d.revision = 0 OR (
               NOT EXISTS (SELECT 1 FROM deliveries o
                           WHERE o.key = d.trigger || '.' || d.postback::text || '.' || d.purpose || '.0'
                             AND o.status IN ('scheduled', 'held'))
               AND NOT EXISTS (SELECT 1 FROM deliveries e
                               WHERE e.revision > 0 AND e.status IN ('scheduled', 'held')
                                 AND e.trigger = d.trigger AND e.postback = d.postback
                                 AND e.purpose = d.purpose AND e.revision < d.revision)))
    ORDER BY due_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
SET claims = d.claims + 1, due_at = $3, lease_owner = $4
FROM due
WHERE d.id = due.id
RETURNING d.id, due.due_at, d.claims, d.settled, d.state::text;

-- name: fence
SELECT id, claims, attempts_written FROM deliveries WHERE key = $1 FOR UPDATE;

-- name: by_key
SELECT id, attempts_written, state::text FROM deliveries WHERE key = $1;

-- name: by_key_for_update
SELECT id, attempts_written, state::text FROM deliveries WHERE key = $1 FOR UPDATE;

-- name: update
-- Write a delivery's state and its projections; $7 adds to the settled claims.
UPDATE deliveries
SET state = $2::text::jsonb, status = $3, due_at = $4, finished_at = $5,
    attempts_written = $6, settled = settled + $7
WHERE id = $1;

-- name: complete
-- As `update`, fenced by the claim's token ($2). Every claim up to this one is settled: the
-- earlier ones were recorded as interrupted by this claimant.
UPDATE deliveries
SET state = $3::text::jsonb, status = $4, due_at = $5, finished_at = $6,
    attempts_written = $7, settled = claims
WHERE id = $1 AND claims = $2;

-- name: unclaim
UPDATE deliveries
-- This claim only: earlier interrupted ones stay to be recorded by the next claimant.
SET settled = settled + 1, due_at = CASE WHEN status = 'scheduled' THEN $3::bigint END
WHERE key = $1 AND claims = $2;

-- name: unfinished_of
-- What a management operation may change: a postback's deliveries not yet finished.
-- A pause ($2) leaves what is out under a live lease to its claimant, whose completion holds it.
SELECT id, attempts_written, state::text FROM deliveries
WHERE postback = $1 AND status IN ('scheduled', 'held')
  AND NOT ($2::boolean AND claims > settled AND due_at > $3::bigint)
ORDER BY id
FOR UPDATE;

-- name: scheduled_of_except
SELECT id, attempts_written, state::text FROM deliveries
WHERE postback = $1 AND status = 'scheduled' AND id <> $2
  -- What is out under a live lease is held by its own completion (the postback is off by then).
  AND NOT (claims > settled AND due_at > $3::bigint)
ORDER BY id
FOR UPDATE;

-- name: next_due
-- The first in the due index that is not a waiting correction (NULL when none): in index
-- order, so it stops at the first.
SELECT (SELECT due_at FROM deliveries d
        WHERE status = 'scheduled'
          AND (d.revision = 0 OR (
                   NOT EXISTS (SELECT 1 FROM deliveries o
                               WHERE o.key = d.trigger || '.' || d.postback::text || '.' || d.purpose || '.0'
                                 AND o.status IN ('scheduled', 'held'))
                   AND NOT EXISTS (SELECT 1 FROM deliveries e
                                   WHERE e.revision > 0 AND e.status IN ('scheduled', 'held')
                                     AND e.trigger = d.trigger AND e.postback = d.postback
                                     AND e.purpose = d.purpose AND e.revision < d.revision)))
        ORDER BY due_at LIMIT 1);

-- name: of
SELECT state::text FROM deliveries
WHERE postback = $1 AND ($2::text IS NULL OR status = $2::text)
  AND (NOT $3::bool OR claims > settled)
ORDER BY created_at DESC, id DESC;

-- name: count
SELECT status, count(*), sum(CASE WHEN claims > settled THEN 1 ELSE 0 END)::bigint
FROM deliveries GROUP BY status;

-- name: gave_up_created_between
-- Candidates for a replay by range; the caller checks the exact times.
SELECT id, attempts_written, state::text FROM deliveries
WHERE postback = $1 AND status = 'gave_up'
  AND created_at >= $2 AND created_at <= $3
ORDER BY id
FOR UPDATE;

-- name: prune
DELETE FROM deliveries WHERE status = 'delivered' AND finished_at < $1;

-- name: later_revision
-- Whether a later revision of a delivery's trigger to its postback went out (claimed at least
-- once, or finished): a correction planned after it is stale and skipped.
SELECT 1 FROM deliveries
WHERE revision > 0 AND trigger = $1 AND postback = $2 AND purpose = $3 AND revision > $4
  AND (claims > 0 OR status IN ('delivered', 'gave_up'))
LIMIT 1;
