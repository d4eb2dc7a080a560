-- Secret Config.txt values are encrypted at rest with a master key (master.key in the data
-- directory, or CALLHOME_MASTER_KEY). One row records a known value encrypted with the key
-- the database was first used with, so that a server started with another key refuses to
-- start instead of writing values that nobody can read back.
CREATE TABLE master_key_check (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    sealed     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
