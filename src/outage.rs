//! Riding out a dependency's outage: work that cannot reach the database or
//! the object store (a restart, a network cut) waits and tries again
//! instead of failing, and says what happened once it can.
//!
//! Architecture invariant: this module decides how long to wait between
//! tries and that only a stop ends the waiting; which errors are outages is
//! `Error::unavailable`'s to say, and what an outage means for the work
//! (an event in a job's log, a warning) is the caller's (`Notice`).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::{Dependency, Error};

/// The wait after the first failed try; it doubles up to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_millis(500);
const MAX_WAIT: Duration = Duration::from_secs(5);

/// What a caller hears of an outage, once at each end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A try failed for want of `dependency`; `error` is the cause, for
    /// the server's log (it may name hosts and paths).
    Began { dependency: Dependency, error: String },
    /// A try succeeded `waited` after the outage began.
    Ended { dependency: Dependency, waited: Duration },
}

/// Who hears of an outage (a job's runner writes it into the job's log).
#[async_trait]
pub trait Listener: Send + Sync {
    async fn heard(&self, notice: Notice);
}

/// Hears nothing: for work whose outages only the server's log tells.
pub struct Quietly;

#[async_trait]
impl Listener for Quietly {
    async fn heard(&self, _: Notice) {}
}

/// Runs `$op` (an expression giving a future of a `Result`, evaluated
/// again for each try) until it succeeds, or fails for a reason other than
/// an outage. While a dependency is out of reach it waits (longer each
/// time, up to `MAX_WAIT`) and tries again, for as long as it takes,
/// unless the `$stop` future resolves first: then it gives the outage's
/// error. `$listener` (a `&dyn Listener`) hears when the outage began and
/// when it ended.
///
/// A macro rather than a function taking a closure: the try often borrows
/// what it works on mutably (a staged blob), and a future returned by a
/// closure can neither do that nor be known to be `Send` where it is
/// spawned.
#[macro_export]
macro_rules! ride_out {
    ($stop:expr, $listener:expr, $op:expr) => {{
        let listener = $listener;
        let mut ride = $crate::outage::Ride::new(listener);
        let stop = $stop;
        let mut stop = ::std::pin::pin!(stop);
        loop {
            let tried = $op.await.map_err($crate::error::Error::from);
            if let Some(done) = ride.after(tried, stop.as_mut()).await {
                break done;
            }
        }
    }};
}

/// The state of `ride_out!` between tries.
pub struct Ride<'a> {
    listener: &'a dyn Listener,
    outage: Option<(Dependency, Instant)>,
    wait: Duration,
}

impl<'a> Ride<'a> {
    pub fn new(listener: &'a dyn Listener) -> Self {
        Ride {
            listener,
            outage: None,
            wait: FIRST_WAIT,
        }
    }

    /// What a try's result means: done (with it), or None after waiting to
    /// try again.
    pub async fn after<T>(
        &mut self,
        tried: Result<T, Error>,
        stop: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Result<T, Error>> {
        let e = match tried {
            Ok(v) => {
                if let Some((dependency, since)) = self.outage.take() {
                    let waited = since.elapsed();
                    tracing::info!(
                        dependency = dependency.name(),
                        waited_secs = waited.as_secs(),
                        "reachable again"
                    );
                    self.listener.heard(Notice::Ended { dependency, waited }).await;
                }
                return Some(Ok(v));
            }
            Err(e) => e,
        };
        let Some(dependency) = e.unavailable() else {
            return Some(Err(e));
        };
        if self.outage.is_none() {
            self.outage = Some((dependency, Instant::now()));
            tracing::warn!(dependency = dependency.name(), error = %e, "cannot be reached; waiting to try again");
            self.listener
                .heard(Notice::Began {
                    dependency,
                    error: e.to_string(),
                })
                .await;
        }
        tokio::select! {
            () = stop => return Some(Err(e)),
            () = tokio::time::sleep(self.wait) => {}
        }
        self.wait = (self.wait * 2).min(MAX_WAIT);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::StoreError;

    fn down() -> Error {
        Error::Store(StoreError::Database(sqlx::Error::PoolTimedOut))
    }

    /// Collects what it hears.
    #[derive(Default)]
    struct Heard(Mutex<Vec<Notice>>);

    #[async_trait]
    impl Listener for Heard {
        async fn heard(&self, notice: Notice) {
            self.0.lock().unwrap().push(notice);
        }
    }

    /// Runs `ride_out!` over `answers` (one per try); returns its result, the
    /// tries made and the notices heard.
    async fn ride(
        answers: Vec<Result<u32, Error>>,
        stop: impl Future<Output = ()>,
    ) -> (Result<u32, Error>, usize, Vec<Notice>) {
        let mut answers = answers.into_iter();
        let mut tries = 0;
        let heard = Heard::default();
        let result = crate::ride_out!(stop, &heard, async {
            tries += 1;
            answers.next().expect("no more answers")
        });
        (result, tries, heard.0.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_waited_out_and_heard_of_at_both_ends() {
        let began = Instant::now();
        let (result, tries, notices) = ride(
            vec![Err(down()), Err(down()), Err(down()), Ok(7)],
            std::future::pending(),
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(tries, 4);
        // Waits of 0.5, 1 and 2 s.
        assert_eq!(began.elapsed(), Duration::from_millis(3500));
        assert!(matches!(
            &notices[0],
            Notice::Began {
                dependency: Dependency::Database,
                ..
            }
        ));
        assert_eq!(
            notices[1],
            Notice::Ended {
                dependency: Dependency::Database,
                waited: Duration::from_millis(3500)
            }
        );
        assert_eq!(notices.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_and_successes_return_at_once_unheard() {
        let (result, tries, notices) = ride(vec![Err(Error::Internal("bug".into()))], std::future::pending()).await;
        assert!(matches!(result, Err(Error::Internal(_))));
        assert_eq!((tries, notices.len()), (1, 0));
        let (result, tries, notices) = ride(vec![Ok(1)], std::future::pending()).await;
        assert_eq!((result.unwrap(), tries, notices.len()), (1, 1, 0));
        let missing = Error::Blob(object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        });
        assert_eq!(missing.unavailable(), None, "a missing object is no outage");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_grow_to_five_seconds_and_a_stop_ends_them() {
        let began = Instant::now();
        let answers = (0..100).map(|_| Err(down())).collect();
        let (result, tries, notices) = ride(answers, tokio::time::sleep(Duration::from_secs(30))).await;
        assert_eq!(result.unwrap_err().unavailable(), Some(Dependency::Database));
        assert_eq!(began.elapsed(), Duration::from_secs(30));
        // 0.5 + 1 + 2 + 4 = 7.5 s, then every 5 s: tries at 0, 0.5, 1.5,
        // 3.5, 7.5, 12.5, 17.5, 22.5, 27.5.
        assert_eq!(tries, 9);
        assert_eq!(notices.len(), 1, "no end heard: it did not end");
    }
}
