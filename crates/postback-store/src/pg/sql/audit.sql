-- name: insert
INSERT INTO audit (postback, at, json) VALUES ($1, $2, $3::text::jsonb);

-- name: of
SELECT json::text FROM audit WHERE postback = $1 ORDER BY id;
