-- name: insert
INSERT INTO deliveries (id, key, postback, trigger, purpose, revision, status, due_at, claims,
                        settled, attempts_written, created_at, finished_at, state)
VALUES (:id, :key, :postback, :trigger, :purpose, :revision, :status, :due_at, 0,
        0, :written, :created_at, :finished_at, :state);

-- name: exists
SELECT 1 FROM deliveries WHERE key = ?1;

-- name: due_ids
-- The claim's selection, in order (RETURNING gives rows in no particular order, and the new
-- due time): read first in the same transaction.
SELECT id FROM deliveries d
WHERE status = 'scheduled' AND due_at <= :now
  -- A postback that is off (paused, disabled, deleted) has nothing claimed: a delivery left
  -- scheduled for it (out under a lease when it went off) waits until it is on again.
  AND (purpose = 'test' OR postback IN (SELECT id FROM postbacks WHERE status = 'active'))
  -- A correction waits behind the earlier revisions of its trigger to its postback.
  AND (d.revision = 0 OR (
           NOT EXISTS (SELECT 1 FROM deliveries o
                       WHERE o.key = d.trigger || '.' || d.postback || '.' || d.purpose || '.0'
                         AND o.status IN ('scheduled', 'held'))
           AND NOT EXISTS (SELECT 1 FROM deliveries e
                           WHERE e.revision > 0 AND e.status IN ('scheduled', 'held')
                             AND e.trigger = d.trigger AND e.postback = d.postback
                             AND e.purpose = d.purpose AND e.revision < d.revision)))
ORDER BY due_at, id
LIMIT :limit;

-- name: claim
-- The rows `due_ids` read, in the same transaction (`:ids`, a JSON array): its selection, with
-- the correction checks, is written and run once.
UPDATE deliveries
SET claims = claims + 1, due_at = :lease_end, lease_owner = :owner
WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING id, claims, settled, state;

-- name: fence
SELECT id, claims, attempts_written FROM deliveries WHERE key = ?1;

-- name: by_key
SELECT id, attempts_written, state FROM deliveries WHERE key = ?1;

-- name: update
-- Write a delivery's state and its projections; `settle` adds to the settled claims.
UPDATE deliveries
SET state = :state, status = :status, due_at = :due_at, finished_at = :finished_at,
    attempts_written = :written, settled = settled + :settle
WHERE id = :id;

-- name: complete
-- As `update`, fenced by the claim's token. Every claim up to this one is settled: the
-- earlier ones were recorded as interrupted by this claimant.
UPDATE deliveries
SET state = :state, status = :status, due_at = :due_at, finished_at = :finished_at,
    attempts_written = :written, settled = claims
WHERE id = :id AND claims = :token;

-- name: unclaim
UPDATE deliveries
-- This claim only: earlier interrupted ones stay to be recorded by the next claimant.
SET settled = settled + 1, due_at = CASE WHEN status = 'scheduled' THEN :now END
WHERE key = :key AND claims = :token;

-- name: unfinished_of
-- What a management operation may change: a postback's deliveries not yet finished.
-- A pause leaves what is out under a live lease to its claimant, whose completion holds it.
SELECT id, attempts_written, state FROM deliveries
WHERE postback = :postback AND status IN ('scheduled', 'held')
  AND NOT (:skip_leased AND claims > settled AND due_at > :now)
ORDER BY id;

-- name: scheduled_of_except
SELECT id, attempts_written, state FROM deliveries
WHERE postback = :postback AND status = 'scheduled' AND id <> :id
  -- What is out under a live lease is held by its own completion (the postback is off by then).
  AND NOT (claims > settled AND due_at > :now)
ORDER BY id;

-- name: next_due
-- The first in the due index that is not a waiting correction (NULL when none): in index
-- order, so it stops at the first.
SELECT (SELECT due_at FROM deliveries d
        WHERE status = 'scheduled'
          AND (d.revision = 0 OR (
                   NOT EXISTS (SELECT 1 FROM deliveries o
                               WHERE o.key = d.trigger || '.' || d.postback || '.' || d.purpose || '.0'
                                 AND o.status IN ('scheduled', 'held'))
                   AND NOT EXISTS (SELECT 1 FROM deliveries e
                                   WHERE e.revision > 0 AND e.status IN ('scheduled', 'held')
                                     AND e.trigger = d.trigger AND e.postback = d.postback
                                     AND e.purpose = d.purpose AND e.revision < d.revision)))
        ORDER BY due_at LIMIT 1);

-- name: of
SELECT state FROM deliveries
WHERE postback = :postback AND (:status IS NULL OR status = :status)
  AND (NOT :leased OR claims > settled)
ORDER BY created_at DESC, id DESC;

-- name: count
SELECT status, count(*), sum(claims > settled) FROM deliveries GROUP BY status;

-- name: gave_up_created_between
-- Candidates for a replay by range; the caller checks the exact times.
SELECT id, attempts_written, state FROM deliveries
WHERE postback = :postback AND status = 'gave_up'
  AND created_at >= :from AND created_at <= :to
ORDER BY id;

-- name: prune
DELETE FROM deliveries WHERE status = 'delivered' AND finished_at < :before;

-- name: stats_counts
-- For the stats: unfinished and exhausted deliveries by postback.
SELECT postback, status, count(*) FROM deliveries WHERE status <> 'delivered'
GROUP BY postback, status;

-- name: stats_unsettled
-- For the stats: pending deliveries with claims not completed, and whether a lease still runs.
SELECT key, claims - settled, due_at > :now FROM deliveries
WHERE status = 'scheduled' AND claims > settled;

-- name: later_revision
-- Whether a later revision of a delivery's trigger to its postback went out (claimed at least
-- once, or finished): a correction planned after it is stale and skipped.
SELECT 1 FROM deliveries
WHERE revision > 0 AND trigger = ?1 AND postback = ?2 AND purpose = ?3 AND revision > ?4
  AND (claims > 0 OR status IN ('delivered', 'gave_up'))
LIMIT 1;
