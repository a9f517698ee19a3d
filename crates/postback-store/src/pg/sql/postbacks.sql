-- name: upsert
INSERT INTO postbacks (id, partner, status, json) VALUES ($1, $2, $3, $4::text::jsonb)
ON CONFLICT (id) DO UPDATE
SET partner = excluded.partner, status = excluded.status, json = excluded.json;

-- name: delete
DELETE FROM postbacks WHERE id = $1;
