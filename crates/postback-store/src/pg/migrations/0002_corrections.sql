-- Corrections: a delivery with a revision above 0 revises an earlier firing of the same trigger
-- to the same postback, and is claimed only once every earlier revision finished (delivered or
-- gave up): `DeliveryKey::waits_behind`, the rule the engine applies too. The claim and the next
-- due time check each candidate correction against its original (found by its unique key) and
-- the unfinished corrections before it (this index); a revision planned after a later one is
-- skipped (the same index).
ALTER TABLE deliveries ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;

-- Only corrections are in it: deliveries that are not corrections pay nothing.
CREATE INDEX deliveries_corrections ON deliveries (trigger, postback, purpose, revision)
    WHERE revision > 0;
