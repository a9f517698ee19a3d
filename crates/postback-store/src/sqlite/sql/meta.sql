-- name: get
SELECT value FROM meta WHERE name = ?1;

-- name: set
UPDATE meta SET value = ?2 WHERE name = ?1;

-- name: bump_registry_version
UPDATE meta SET value = value + 1 WHERE name = 'registry_version' RETURNING value;
