-- name: next_id
-- Notifications are never deleted: the next id is one past the largest.
SELECT coalesce(max(id), 0) + 1 FROM notifications;

-- name: insert
INSERT INTO notifications (id, postback, at, json) VALUES (?1, ?2, ?3, ?4);

-- name: pending
SELECT json FROM notifications WHERE done_at IS NULL ORDER BY id;

-- name: done
UPDATE notifications SET done_at = ?2 WHERE id = ?1 AND done_at IS NULL;
