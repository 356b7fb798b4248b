-- The plan joins the rollup key: a subscription that changes plan within a bucket gets a row
-- per plan, so usage is attributed to the plan in force at call time. (A table rebuild: SQLite
-- cannot change a primary key in place.)
CREATE TABLE usage_rollups_next (
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
    PRIMARY KEY (granularity, bucket, instance, subscription_id, plan_id, version_id, operation, status_class)
);
INSERT INTO usage_rollups_next (granularity, bucket, instance, subscription_id, api_id, version_id, app_id,
    consumer_org_id, plan_id, operation, status_class, calls, units, refused, orphaned, bytes_in, bytes_out,
    latency_micros_sum, latency_sketch)
SELECT granularity, bucket, instance, subscription_id, api_id, version_id, app_id, consumer_org_id, plan_id,
    operation, status_class, calls, units, refused, orphaned, bytes_in, bytes_out, latency_micros_sum, latency_sketch
FROM usage_rollups;
DROP TABLE usage_rollups;
ALTER TABLE usage_rollups_next RENAME TO usage_rollups;
CREATE INDEX usage_rollups_time ON usage_rollups (granularity, bucket);
