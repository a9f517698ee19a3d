-- Corrections: a delivery with a revision above 0 revises an earlier firing of the same trigger
-- to the same postback, and is claimed only once every earlier revision finished (delivered or
-- gave up): `DeliveryKey::waits_behind`, the rule the engine applies too.
ALTER TABLE deliveries ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;

-- Only corrections pay for it: an original is found by its key.
CREATE INDEX deliveries_corrections ON deliveries (trigger, postback, purpose, revision)
    WHERE revision > 0 AND status IN ('scheduled', 'held');

-- Unfinished corrections that must wait: their original, or an earlier correction, is pending
-- or held. The claim and the next due time leave these out. (The status test is the index's, so
-- the view reads only unfinished corrections.)
CREATE VIEW deliveries_waiting AS
SELECT d.id FROM deliveries d
WHERE d.revision > 0 AND d.status IN ('scheduled', 'held')
  AND (EXISTS (SELECT 1 FROM deliveries o
               WHERE o.key = d.trigger || '.' || d.postback || '.' || d.purpose || '.0'
                 AND o.status IN ('scheduled', 'held'))
       OR EXISTS (SELECT 1 FROM deliveries e
                  WHERE e.revision > 0 AND e.status IN ('scheduled', 'held')
                    AND e.trigger = d.trigger AND e.postback = d.postback
                    AND e.purpose = d.purpose AND e.revision < d.revision));
