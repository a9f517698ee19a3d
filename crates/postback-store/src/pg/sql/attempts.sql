-- name: insert
INSERT INTO attempts (delivery, number, postback, at, json)
VALUES ($1, $2, $3, $4, $5::text::jsonb);

-- name: of
SELECT json::text FROM attempts WHERE delivery = $1 ORDER BY id;

-- name: prune
DELETE FROM attempts WHERE at < $1;
