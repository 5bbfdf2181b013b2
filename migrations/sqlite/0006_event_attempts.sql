-- Each job event says which attempt (run of the job on a worker) wrote it:
-- a job resumed from a checkpoint trains some steps again, and a per-step
-- view keeps each step's latest attempt. Events written before any
-- attempt (creation, queueing) carry 0.
ALTER TABLE job_events ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
