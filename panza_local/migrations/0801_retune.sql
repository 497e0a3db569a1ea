-- Re-tune: the promotion gate's decision for every candidate adapter (both scores on the same test pairs).
CREATE TABLE retune_gate (
  adapter_id    TEXT PRIMARY KEY,              -- the candidate
  current_id    TEXT,                          -- what it was compared with (NULL: the base model alone)
  score_new     REAL,                          -- mean per-token NLL on the held-out pairs (lower is better)
  score_current REAL,
  n_test        INTEGER NOT NULL,              -- held-out pairs scored
  test_hash     TEXT,                          -- which pairs: both scores are on exactly these
  promoted      INTEGER NOT NULL,
  reason        TEXT NOT NULL,
  decided_at    TEXT NOT NULL
);

-- Small facts a pass needs from the previous one (e.g. which ingest run the index was last synced after).
CREATE TABLE retune_state (
  key    TEXT PRIMARY KEY,
  value  TEXT NOT NULL
);
