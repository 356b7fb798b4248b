-- Rate-limit windows of a plan for single operations (by OpenAPI operationId), on top of the
-- plan's own: `{"search": [{"requests": 10, "per": "minute"}]}`.
ALTER TABLE plans ADD COLUMN operation_limits TEXT NOT NULL DEFAULT '{}';
