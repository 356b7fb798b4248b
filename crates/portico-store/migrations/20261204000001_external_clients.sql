-- An app's identity at an external token issuer (an API's `policies.token_issuers`): tokens
-- of `issuer` whose client claim is `client_id` call as this app. One app per identity.
CREATE TABLE app_external_clients (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX app_external_clients_identity ON app_external_clients (issuer, client_id);
CREATE INDEX app_external_clients_app ON app_external_clients (app_id);
