-- An API version's request policies (IP lists, JSON depth, operation weights, header and path
-- rewriting, upstream credential, request signing, CORS) as JSON; NULL means none.
ALTER TABLE api_versions ADD COLUMN policies TEXT;
