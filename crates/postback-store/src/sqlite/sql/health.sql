-- name: get
SELECT json FROM health WHERE postback = ?1;

-- name: upsert
INSERT INTO health (postback, json) VALUES (?1, ?2)
ON CONFLICT (postback) DO UPDATE SET json = excluded.json;

-- name: delete
DELETE FROM health WHERE postback = ?1;

-- name: all
-- For the stats: every postback's health.
SELECT postback, json FROM health;
