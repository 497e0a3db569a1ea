-- Core schema. Migrations are append-only: never edit an applied file; add a new NNNN_name.sql.
-- Ranges by stage so parallel work never collides: 01xx ingest, 02xx playback, 03xx index, 04xx train,
-- 05xx draft/serve, 06xx tui, 07xx eval, 08xx retune, 09xx privacy.

CREATE TABLE sources (
  id          INTEGER PRIMARY KEY,
  uri         TEXT NOT NULL UNIQUE,            -- absolute path, or imap://user@host:port/mailbox
  kind        TEXT NOT NULL,                   -- mbox, maildir, eml, emlx, thunderbird, jsonl, imap, docs
  registered  INTEGER NOT NULL DEFAULT 0,      -- 1: `panza retune` re-reads it
  added_at    TEXT NOT NULL,
  last_sync   TEXT,
  cursor      TEXT                             -- JSON sync state (IMAP UIDVALIDITY/UID, ...)
);

-- Per-file sync state so an unchanged file is never parsed again and a grown mbox resumes.
CREATE TABLE source_files (
  source_id   INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
  path        TEXT NOT NULL,
  size        INTEGER NOT NULL,
  mtime_ns    INTEGER NOT NULL,
  offset      INTEGER NOT NULL DEFAULT 0,      -- bytes fully ingested (append-only mbox growth)
  head_hash   TEXT,                            -- hash of the first bytes: detects rewrites
  PRIMARY KEY (source_id, path)
);

CREATE TABLE messages (
  id           INTEGER PRIMARY KEY,
  source_id    INTEGER REFERENCES sources(id) ON DELETE SET NULL,
  location     TEXT,                           -- file path (+ ':offset'), or IMAP UID, inside the source
  message_id   TEXT,                           -- RFC 5322 Message-ID, normalised, may be NULL
  content_hash TEXT NOT NULL UNIQUE,           -- hash of the normalised cleaned body (cross-folder de-dup)
  date         TEXT,                           -- ISO 8601, UTC
  from_addr    TEXT,
  to_addrs     TEXT,                           -- comma separated
  cc_addrs     TEXT,
  subject      TEXT,
  body         TEXT NOT NULL,                  -- cleaned text the author wrote
  thread       TEXT,                           -- quoted / earlier text kept as reply context
  in_reply_to  TEXT,
  refs         TEXT,
  is_mine      INTEGER NOT NULL DEFAULT 0,     -- written by the user (a training target)
  language     TEXT,
  deleted      INTEGER NOT NULL DEFAULT 0,     -- gone from its source: marked, then dropped from the index
  ingested_at  TEXT NOT NULL
);
CREATE INDEX messages_message_id ON messages(message_id);
CREATE INDEX messages_mine_date ON messages(is_mine, date);
CREATE INDEX messages_source ON messages(source_id);

CREATE TABLE documents (
  id           INTEGER PRIMARY KEY,
  source_id    INTEGER REFERENCES sources(id) ON DELETE CASCADE,
  path         TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  title        TEXT,
  text         TEXT NOT NULL,
  deleted      INTEGER NOT NULL DEFAULT 0,
  ingested_at  TEXT NOT NULL,
  UNIQUE (source_id, path)
);

-- Data playback: one instruction per (email content, generator config).
CREATE TABLE pairs (
  id            INTEGER PRIMARY KEY,
  message_id    INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
  content_hash  TEXT NOT NULL,
  gen_config    TEXT NOT NULL,                 -- hash of the generator's model + prompt + settings
  status        TEXT NOT NULL,                 -- ok | failed
  instruction   TEXT,
  reason        TEXT,                          -- why it failed
  copy_ratio    REAL,
  attempts      INTEGER NOT NULL DEFAULT 1,
  created_at    TEXT NOT NULL,
  UNIQUE (content_hash, gen_config)
);

-- What the Chroma collection holds, so re-indexing touches only what changed.
CREATE TABLE index_items (
  item_id       TEXT PRIMARY KEY,              -- id in the Chroma collection
  kind          TEXT NOT NULL,                 -- sent | thread | doc
  ref_id        INTEGER NOT NULL,              -- messages.id or documents.id
  content_hash  TEXT NOT NULL,
  model         TEXT NOT NULL,                 -- embedding model that built it
  indexed_at    TEXT NOT NULL
);

-- Base models the user added by hand (catalogue models are found by name).
CREATE TABLE models (
  name      TEXT PRIMARY KEY,
  path      TEXT NOT NULL,
  sha256    TEXT,
  arch      TEXT,
  added_at  TEXT NOT NULL
);

CREATE TABLE adapters (
  id          TEXT PRIMARY KEY,
  base_model  TEXT NOT NULL,
  base_sha256 TEXT NOT NULL,
  data_hash   TEXT NOT NULL,
  config      TEXT NOT NULL,                   -- JSON
  metrics     TEXT,                            -- JSON
  path        TEXT NOT NULL,
  status      TEXT NOT NULL DEFAULT 'ready',   -- training | ready | failed
  created_at  TEXT NOT NULL
);

-- One row per stage run (ingest, playback, index, train, eval, retune): what it did and how long.
CREATE TABLE runs (
  id          INTEGER PRIMARY KEY,
  stage       TEXT NOT NULL,
  started_at  TEXT NOT NULL,
  finished_at TEXT,
  status      TEXT NOT NULL DEFAULT 'running', -- running | done | failed | interrupted
  summary     TEXT                             -- JSON
);

CREATE TABLE conversations (
  id          INTEGER PRIMARY KEY,
  title       TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL
);

CREATE TABLE chat_messages (
  id              INTEGER PRIMARY KEY,
  conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
  role            TEXT NOT NULL,
  content         TEXT NOT NULL,
  meta            TEXT,                        -- JSON: retrieved ids, adapter, tokens/s
  created_at      TEXT NOT NULL
);

CREATE TABLE drafts (
  id          INTEGER PRIMARY KEY,
  instruction TEXT NOT NULL,
  text        TEXT NOT NULL,
  meta        TEXT,                            -- JSON
  created_at  TEXT NOT NULL
);
