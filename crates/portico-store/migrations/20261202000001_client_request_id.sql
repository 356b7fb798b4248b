-- The client's X-Request-Id of a call, so support finds a call by the id the client logged.
-- Indexed only where present: calls without one cost the request log nothing more.
ALTER TABLE usage_events ADD COLUMN client_request_id TEXT;
CREATE INDEX usage_events_client_request_id ON usage_events (client_request_id) WHERE client_request_id IS NOT NULL;
