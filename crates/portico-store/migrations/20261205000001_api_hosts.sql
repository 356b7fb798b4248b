-- Host names an API answers on at the gateway (`weather.example.com/v1/…` besides
-- `/{slug}/v1/…`). `apis.hosts` lists them for reading; `api_hosts` holds each name once across
-- the marketplace, so two APIs can never claim the same host.
ALTER TABLE apis ADD COLUMN hosts TEXT NOT NULL DEFAULT '[]';
CREATE TABLE api_hosts (
    host TEXT PRIMARY KEY,
    api_id TEXT NOT NULL REFERENCES apis (id) ON DELETE CASCADE
);
CREATE INDEX api_hosts_api ON api_hosts (api_id);
