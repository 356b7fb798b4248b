-- E-mail verification and single-use tokens (verification, password reset), kept as hashes.
ALTER TABLE users ADD COLUMN email_verified_at BIGINT;
CREATE TABLE email_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX email_tokens_user ON email_tokens (user_id);

-- Webhook endpoints of an organization, signed the Standard Webhooks way, and every delivery
-- (the delivery log, retried with backoff, re-sendable by hand).
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_status BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);

-- Alert rules of an API (its provider's), and what has fired, so nothing fires twice.
CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    api_id TEXT NOT NULL REFERENCES apis (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    threshold BIGINT NOT NULL,
    window_minutes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX alert_rules_api ON alert_rules (api_id);
CREATE TABLE alerts_fired (
    alert_key TEXT PRIMARY KEY,
    fired_at BIGINT NOT NULL
);
