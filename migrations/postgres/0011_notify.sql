-- Wake-ups for other processes sharing this database (src/store/notify.rs
-- listens): queued work for the workers' lease machines, new job events and
-- eval progress for watchers on any replica. Each is a hint: the rows are the
-- truth, and a listener that missed one catches up from them. A notification
-- is sent at commit, so a woken reader finds the row.
CREATE FUNCTION lathe_notify_job() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('lathe_changes', 'job_queued:' || NEW.id);
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_notify_queued AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION lathe_notify_job();

CREATE FUNCTION lathe_notify_job_event() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('lathe_changes', 'job_event:' || NEW.job_id);
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER job_events_notify AFTER INSERT ON job_events
    FOR EACH ROW EXECUTE FUNCTION lathe_notify_job_event();

CREATE FUNCTION lathe_notify_run() RETURNS trigger AS $$
BEGIN
    IF NEW.state = 'queued' THEN
        PERFORM pg_notify('lathe_changes', 'run_queued:' || NEW.id);
    END IF;
    PERFORM pg_notify('lathe_changes', 'run_progress:' || NEW.id);
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER eval_runs_notify AFTER INSERT OR UPDATE OF state ON eval_runs
    FOR EACH ROW EXECUTE FUNCTION lathe_notify_run();

CREATE FUNCTION lathe_notify_run_item() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('lathe_changes', 'run_progress:' || NEW.run_id);
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER eval_output_items_notify AFTER INSERT ON eval_output_items
    FOR EACH ROW EXECUTE FUNCTION lathe_notify_run_item();
