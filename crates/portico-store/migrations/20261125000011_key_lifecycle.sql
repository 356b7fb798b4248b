-- API keys: an expiry (also how rotation retires the old key after an overlap), scopes (the
-- API slugs a key may call; NULL: every API its app subscribes to) and when it was last used
-- (written in batches by the control plane, never on the request path).
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
