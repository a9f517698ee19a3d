-- name: insert
INSERT INTO attempts (delivery, number, postback, at, json)
VALUES (:delivery, :number, :postback, :at, :json);

-- name: of
SELECT json FROM attempts WHERE delivery = ?1 ORDER BY id;

-- name: prune
DELETE FROM attempts WHERE at < :before;
