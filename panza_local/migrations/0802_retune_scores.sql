-- Re-tune: each held-out email's score under one scorer (base model file + adapter file), so a gate killed
-- midway, or run again on the same pairs, scores nothing twice. The key hashes the scorer, the prompt's
-- messages and the email: a changed profile, instruction or adapter is a new key. No text is kept.
CREATE TABLE retune_scores (
  key        TEXT PRIMARY KEY,
  nll        REAL NOT NULL,                  -- summed negative log-likelihood of the email's tokens
  n          INTEGER NOT NULL,               -- its token count
  scored_at  TEXT NOT NULL
);
