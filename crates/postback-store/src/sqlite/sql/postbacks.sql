-- name: all
SELECT id, json FROM postbacks ORDER BY id;

-- name: upsert
INSERT INTO postbacks (id, partner, status, json) VALUES (:id, :partner, :status, :json)
ON CONFLICT (id) DO UPDATE
SET partner = excluded.partner, status = excluded.status, json = excluded.json;

-- name: delete
DELETE FROM postbacks WHERE id = ?1;
