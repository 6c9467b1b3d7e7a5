-- Stream chunks belong to the step attempt that wrote them, so a claim can
-- keep what finished attempts streamed and purge only what unfinished ones
-- wrote. NULL (rows written before this migration, or chunks posted through
-- the events API): no finished attempt; a claim purges them.
ALTER TABLE chunks ADD COLUMN node_id TEXT;
ALTER TABLE chunks ADD COLUMN attempt INTEGER;
