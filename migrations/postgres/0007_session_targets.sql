-- Direct-session targets: the admin-managed allow-list of reading-platform endpoints a modem
-- may be sent to (issue 16). An empty `users` and `api_keys` means anyone allowed to open
-- sessions; otherwise only the named users (by user name) and API keys (by id).
CREATE TABLE session_targets (
    id          TEXT PRIMARY KEY,
    network     TEXT NOT NULL,
    port_first  BIGINT NOT NULL CHECK (port_first BETWEEN 1 AND 65535),
    port_last   BIGINT NOT NULL CHECK (port_last BETWEEN port_first AND 65535),
    users       TEXT NOT NULL DEFAULT '[]',
    api_keys    TEXT NOT NULL DEFAULT '[]',
    note        TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Who opened a session (user or API key id), for ownership checks; the host name the caller
-- gave when it was resolved to the address sent to the modem.
ALTER TABLE sessions ADD COLUMN created_by_id TEXT;
ALTER TABLE sessions ADD COLUMN requested_host TEXT;
