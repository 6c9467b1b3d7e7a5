-- The unredacted actor state: the copy execution builds on. `run_state`
-- becomes the shown copy, with a mutate step's secret paths redacted. NULL
-- (rows written before this migration): `run_state` is the only copy.
ALTER TABLE runs ADD COLUMN run_state_raw TEXT;
