-- Billable units per call in the request log (0: Portico answered itself; never billed).
ALTER TABLE usage_events ADD COLUMN units BIGINT NOT NULL DEFAULT 1;

-- Usage rolled up per minute and per day x subscription x API version x operation x status
-- class, with a mergeable latency sketch (portico_core::sketch) so that p50/p95/p99 can be read
-- for any range. Each shipping instance writes its own rows (`instance`), so two gateways never
-- race on a row's sketch; readers add the instances up.
CREATE TABLE usage_rollups (
    granularity TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    instance TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    api_id TEXT NOT NULL,
    version_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    consumer_org_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    status_class TEXT NOT NULL,
    calls BIGINT NOT NULL,
    units BIGINT NOT NULL,
    refused BIGINT NOT NULL,
    orphaned BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    latency_micros_sum BIGINT NOT NULL,
    latency_sketch TEXT NOT NULL,
    PRIMARY KEY (granularity, bucket, instance, subscription_id, version_id, operation, status_class)
);
CREATE INDEX usage_rollups_time ON usage_rollups (granularity, bucket);
