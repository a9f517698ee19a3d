-- name: next_id
SELECT nextval('notification_ids');

-- name: insert
INSERT INTO notifications (id, postback, at, json) VALUES ($1, $2, $3, $4::text::jsonb);

-- name: pending
SELECT json::text FROM notifications WHERE done_at IS NULL ORDER BY id;

-- name: done
UPDATE notifications SET done_at = $2 WHERE id = $1 AND done_at IS NULL;
