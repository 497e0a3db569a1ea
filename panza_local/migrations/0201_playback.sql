-- Playback: where each instruction came from and how it scored, so quality is reported honestly per pair.
ALTER TABLE pairs ADD COLUMN source TEXT;            -- model | fallback (the deterministic extractive instruction)
ALTER TABLE pairs ADD COLUMN recall_hit INTEGER;     -- 1: the instruction's nearest email in the mailbox is its own
ALTER TABLE pairs ADD COLUMN seconds REAL;           -- generation time (benchmarks, ETA)
CREATE INDEX pairs_message ON pairs(message_id);
