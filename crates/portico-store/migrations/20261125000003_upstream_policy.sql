-- An API version's upstream policy (extra targets, balancing, timeouts, retries, health
-- checks) as JSON; NULL means the defaults.
ALTER TABLE api_versions ADD COLUMN upstream_policy TEXT;
