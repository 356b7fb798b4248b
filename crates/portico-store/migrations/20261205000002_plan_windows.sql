-- A plan's rate limit may have more windows than its first (`rate_limit_*`): e.g. 10 a second
-- and 1000 an hour, all enforced, as JSON `[{"requests":1000,"per":"hour"}]`. And a quota per
-- calendar day (UTC) besides the monthly one.
ALTER TABLE plans ADD COLUMN extra_rate_limits TEXT NOT NULL DEFAULT '[]';
ALTER TABLE plans ADD COLUMN daily_quota BIGINT;
