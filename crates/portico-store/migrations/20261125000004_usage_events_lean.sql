-- The request log's rows are written at the gateway's call rate: keep them to the one index
-- that makes shipping idempotent (the primary key; Portico's call ids are time-ordered v7
-- UUIDs, so it also orders them by time).
DROP INDEX usage_events_subscription_at;
