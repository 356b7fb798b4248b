-- Every metered call, once: the shipper inserts each journaled event here keyed by its
-- gateway-generated request id, so a batch shipped twice counts once. Doubles as the request
-- log ("what happened to request X?"). `orphaned = 1`: the gateway died mid-call; reported,
-- never billed.
CREATE TABLE usage_events (
    request_id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    subscription_id TEXT NOT NULL,
    api_id TEXT NOT NULL,
    version_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    consumer_org_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    operation TEXT,
    status BIGINT NOT NULL,
    latency_micros BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    orphaned BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_events_subscription_at ON usage_events (subscription_id, at);

-- usage_daily gains `orphaned` and loses its foreign key: usage is history, and a journal that
-- still holds calls of a since-deleted subscription must be able to ship them.
CREATE TABLE usage_daily_v2 (
    subscription_id TEXT NOT NULL,
    day TEXT NOT NULL,
    calls BIGINT NOT NULL,
    success BIGINT NOT NULL,
    client_errors BIGINT NOT NULL,
    server_errors BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    latency_micros_sum BIGINT NOT NULL,
    orphaned BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription_id, day)
);
INSERT INTO usage_daily_v2 (subscription_id, day, calls, success, client_errors, server_errors, bytes_in, bytes_out, latency_micros_sum, orphaned)
    SELECT subscription_id, day, calls, success, client_errors, server_errors, bytes_in, bytes_out, latency_micros_sum, 0 FROM usage_daily;
DROP TABLE usage_daily;
ALTER TABLE usage_daily_v2 RENAME TO usage_daily;
