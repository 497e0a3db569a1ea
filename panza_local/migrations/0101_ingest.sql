-- Ingest: who may claim authorship (so a new --me re-labels without re-parsing), names, folder hints.
ALTER TABLE messages ADD COLUMN author TEXT;          -- comma-separated authorship addresses; NULL: JSONL corpus
ALTER TABLE messages ADD COLUMN from_name TEXT;
ALTER TABLE messages ADD COLUMN to_names TEXT;        -- JSON list, parallel to to_addrs
ALTER TABLE messages ADD COLUMN folder TEXT;          -- folder / label it was found in (a hint only)
ALTER TABLE messages ADD COLUMN html_only INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_location ON messages(location);

CREATE TABLE ingest_meta (
  key    TEXT PRIMARY KEY,
  value  TEXT NOT NULL
);
