-- The request log as pages (portico_store::request_log): one row per second x consumer
-- organization x API per shipping round, its calls packed into `body` (base64), instead of one
-- row per call. Rows per call were most of the shipper's cost.
CREATE TABLE request_log_pages (
    id TEXT PRIMARY KEY,
    second BIGINT NOT NULL,
    consumer_org_id TEXT NOT NULL,
    api_id TEXT NOT NULL,
    calls BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX request_log_pages_second ON request_log_pages (second);
-- The seconds in which a client's X-Request-Id was seen: only calls that carried one.
CREATE TABLE request_log_client_ids (
    client_request_id TEXT NOT NULL,
    second BIGINT NOT NULL,
    PRIMARY KEY (client_request_id, second)
);
CREATE INDEX request_log_client_ids_second ON request_log_client_ids (second);
