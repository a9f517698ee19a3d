-- name: insert
INSERT INTO audit (postback, at, json) VALUES (?1, ?2, ?3);

-- name: of
SELECT json FROM audit WHERE postback = ?1 ORDER BY id;
