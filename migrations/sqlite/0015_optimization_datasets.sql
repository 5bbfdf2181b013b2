-- A prompt optimisation's datasets as columns (they are also in its spec),
-- so deleting a dataset an unfinished optimisation reads is refused.
ALTER TABLE prompt_optimizations ADD COLUMN train_dataset_id TEXT NOT NULL DEFAULT '';
ALTER TABLE prompt_optimizations ADD COLUMN validation_dataset_id TEXT NOT NULL DEFAULT '';
ALTER TABLE prompt_optimizations ADD COLUMN test_dataset_id TEXT;
CREATE INDEX prompt_optimizations_by_train ON prompt_optimizations (train_dataset_id);
CREATE INDEX prompt_optimizations_by_validation ON prompt_optimizations (validation_dataset_id);
CREATE INDEX prompt_optimizations_by_test ON prompt_optimizations (test_dataset_id);
