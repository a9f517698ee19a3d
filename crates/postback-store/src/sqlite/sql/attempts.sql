-- name: insert
INSERT INTO attempts (delivery, number, postback, at, json)
VALUES (:delivery, :number, :postback, :at, :json);

-- name: of
SELECT json FROM attempts WHERE delivery = ?1 ORDER BY id;

-- name: prune
DELETE FROM attempts WHERE at < :before;

-- name: last_failures
-- For the stats: each postback's latest failed attempt (SQLite takes the bare columns from the
-- row of the max). Scans the table: attempts carry no index by postback.
SELECT postback, delivery, max(at), json FROM attempts
WHERE json_extract(json, '$.failure') IS NOT NULL
GROUP BY postback;
