//! Why an attempt's engine was asked to stop, as one signal: the reason (set once, but a
//! lost lease overrides any other) and the flag the engine thread polls between
//! iterations are set together, and watchers wake when it is set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Why the engine was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The coordinator cancelled the job.
    Cancelled,
    /// The lease is gone (a newer attempt holds the job).
    Lost,
    /// The worker is draining (SIGTERM).
    Drain,
}

/// The stop signal of one attempt; clones share it.
#[derive(Debug, Clone)]
pub struct StopSignal {
    flag: Arc<AtomicBool>,
    reason: watch::Sender<Option<Stop>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self {
            flag: Arc::new(AtomicBool::new(false)),
            reason: watch::channel(None).0,
        }
    }
}

impl StopSignal {
    /// Asks the engine to stop for `why`. The first reason stands, except that a lost
    /// lease replaces any other (nothing may be reported for a lease that is gone).
    /// True when this call changed the reason.
    pub fn request(&self, why: Stop) -> bool {
        let changed = self.reason.send_if_modified(|r| match r {
            None => {
                *r = Some(why);
                true
            }
            Some(old) if why == Stop::Lost && *old != Stop::Lost => {
                *r = Some(why);
                true
            }
            Some(_) => false,
        });
        if changed {
            self.flag.store(true, Ordering::SeqCst);
        }
        changed
    }

    /// The reason, once asked.
    pub fn reason(&self) -> Option<Stop> {
        *self.reason.borrow()
    }

    /// The flag the engine polls (set with every reason).
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    /// A receiver that wakes whenever the reason changes.
    pub fn watch(&self) -> watch::Receiver<Option<Stop>> {
        self.reason.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_stands_but_a_lost_lease_overrides() {
        let s = StopSignal::default();
        assert!(!s.flag().load(Ordering::SeqCst));
        assert!(s.request(Stop::Drain));
        assert!(s.flag().load(Ordering::SeqCst));
        assert!(!s.request(Stop::Cancelled));
        assert_eq!(s.reason(), Some(Stop::Drain));
        assert!(s.request(Stop::Lost));
        assert!(!s.request(Stop::Lost));
        assert_eq!(s.clone().reason(), Some(Stop::Lost));
    }
}
