-- The unredacted step output: the only copy execution may read.
ALTER TABLE steps ADD COLUMN output_raw TEXT;
