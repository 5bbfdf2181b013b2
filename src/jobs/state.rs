//! The job state machine, in one place. Every state change names the
//! states it may come from, and the store applies it compare-and-set, so an
//! illegal or racing change alters nothing.

use super::model::JobState::{self, *};

/// The states `to` may be entered from.
pub fn allowed_from(to: JobState) -> &'static [JobState] {
    match to {
        ValidatingFiles => &[],
        // Files validated, ResumeJob, or a worker that vanished or stopped.
        Queued => &[ValidatingFiles, Paused, Running],
        Running => &[Queued],
        Succeeded => &[Running],
        Failed => &[ValidatingFiles, Queued, Running],
        Cancelled => &[ValidatingFiles, Queued, Running, Paused],
        Paused => &[Queued, Running],
    }
}

/// Whether a user-requested change from `from` to `to` is legal.
pub fn can(from: JobState, to: JobState) -> bool {
    allowed_from(to).contains(&from)
}

/// Words for an error that says why a change is not possible.
pub fn refusal(job_id: &str, from: JobState, action: &str) -> String {
    format!("job {job_id} is {}; it cannot be {action}", from.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final() {
        for to in JobState::ALL {
            for from in [Succeeded, Failed, Cancelled] {
                assert!(!can(from, to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn pause_and_resume_follow_the_spec() {
        assert!(can(Running, Paused) && can(Queued, Paused));
        assert!(!can(ValidatingFiles, Paused));
        assert!(can(Paused, Queued));
        assert!(!can(Paused, Running), "resume goes through the queue");
        assert!(can(Paused, Cancelled));
    }
}
