-- OAuth2 client credentials of consumers' apps: the secret is kept only as an HMAC.
CREATE TABLE oauth_clients (
    client_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX oauth_clients_app ON oauth_clients (app_id);

-- The keys Portico signs access tokens with (Ed25519). A retired key signs nothing but stays
-- in the JWKS until the tokens it signed have expired.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    private_key TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
