-- An app's identity at an external token issuer (an API's `policies.token_issuers`): tokens
-- of `issuer`, verified with the keys at `jwks_url`, whose client claim is `client_id` call as
-- this app. An issuer is known by its `iss` *and* its keys, so that a provider who names
-- another's `iss` with keys of its own reaches none of the apps registered for the real one.
-- One app per identity; the app's owner proved it with a token of that client.
CREATE TABLE app_external_clients (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    issuer TEXT NOT NULL,
    jwks_url TEXT NOT NULL,
    client_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX app_external_clients_identity ON app_external_clients (jwks_url, issuer, client_id);
CREATE INDEX app_external_clients_app ON app_external_clients (app_id);
