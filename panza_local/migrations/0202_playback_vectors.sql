-- Playback: the embedding of every text the quality metric compares (the user's emails, the instructions),
-- keyed by a hash of the embedding model's name and the text, so a pass on new mail embeds only what is new
-- instead of the whole mailbox again (recall@1 is scored against all of it).
CREATE TABLE playback_vectors (
  key  TEXT PRIMARY KEY,
  vec  BLOB NOT NULL                           -- float32, L2-normalised
);
