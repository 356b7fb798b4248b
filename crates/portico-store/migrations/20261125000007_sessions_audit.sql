-- Sessions know when they were last used (idle timeout), from where and by what (the list a
-- person sees of their own sessions).
ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT;
ALTER TABLE sessions ADD COLUMN ip TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;

-- Every state-changing action: who, what, when, from where, before and after. Append-only:
-- the store has no function that updates or deletes a row.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor_user_id TEXT,
    actor TEXT NOT NULL,
    org_id TEXT,
    action TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id TEXT,
    ip TEXT,
    before_json TEXT,
    after_json TEXT
);
CREATE INDEX audit_log_org_at ON audit_log (org_id, at);
CREATE INDEX audit_log_at ON audit_log (at);
