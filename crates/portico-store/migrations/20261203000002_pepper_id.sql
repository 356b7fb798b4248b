-- Which key pepper each API key's hash and each OAuth client secret's hash was made under (the
-- pepper's public id, never the pepper). NULL: made before this was noted; Portico fills it in
-- at start when only one pepper is configured (then every usable hash is under that one).
ALTER TABLE api_keys ADD COLUMN pepper_id TEXT;
ALTER TABLE oauth_clients ADD COLUMN pepper_id TEXT;
