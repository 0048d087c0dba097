//! Where jobs and batches are in their lives: one definition for the coordinator (which
//! stores them), the wire (`proto` converts them) and the CLI (which shows them).

use std::collections::BTreeMap;
use std::fmt;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobState {
    /// Waiting for the jobs it runs after (`after`) to succeed.
    Waiting,
    /// Waiting for a worker.
    Queued,
    /// Leased to a worker that has not reported progress yet.
    Leased,
    /// Its worker has sent a heartbeat.
    Running,
    /// Finished; one attempt's output is the result.
    Succeeded,
    /// Out of attempts, or failed on a bad input.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Will not run: a job it runs after failed or was cancelled (its error says which);
    /// a retry of that job brings it back.
    Blocked,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 8] = [
        Self::Waiting,
        Self::Queued,
        Self::Leased,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Blocked,
    ];

    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Blocked => "blocked",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for states a job does not leave on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Blocked
        )
    }

    /// True while a worker holds the job.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Leased | Self::Running)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a batch is, derived from its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Every job is waiting for a worker: none has ended and none is held (jobs handed
    /// back or whose lease expired wait again too).
    Queued,
    /// Some job has not ended, and some job has started or ended.
    Running,
    /// Every job succeeded.
    Succeeded,
    /// Every job ended and at least one failed.
    Failed,
    /// Every job ended, none failed, at least one was cancelled.
    Cancelled,
}

impl BatchState {
    /// Every state, in the order a person reads them.
    pub const ALL: [BatchState; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The state with this name (`as_str`), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The state of a batch whose jobs are in `counts`.
    pub fn of(counts: &BTreeMap<JobState, u64>) -> Self {
        let n = |s: JobState| counts.get(&s).copied().unwrap_or(0);
        let total: u64 = counts.values().sum();
        if total > 0 && n(JobState::Queued) + n(JobState::Waiting) == total {
            Self::Queued
        } else if JobState::ALL.iter().any(|s| !s.is_terminal() && n(*s) > 0) {
            Self::Running
        } else if n(JobState::Failed) > 0 {
            Self::Failed
        } else if n(JobState::Cancelled) > 0 {
            Self::Cancelled
        } else {
            Self::Succeeded
        }
    }

    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// True once every job has ended.
    pub fn has_ended(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(of: &[(JobState, u64)]) -> BTreeMap<JobState, u64> {
        of.iter().copied().collect()
    }

    #[test]
    fn names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn a_batch_is_queued_until_a_job_starts_or_ends() {
        use JobState::*;
        assert_eq!(BatchState::of(&counts(&[(Queued, 3)])), BatchState::Queued);
        assert_eq!(
            BatchState::of(&counts(&[(Queued, 2), (Leased, 1)])),
            BatchState::Running
        );
        // Retried jobs queue again beside finished ones: the batch is under way.
        assert_eq!(
            BatchState::of(&counts(&[(Queued, 1), (Succeeded, 1)])),
            BatchState::Running
        );
        assert_eq!(
            BatchState::of(&counts(&[(Succeeded, 1), (Failed, 1), (Cancelled, 1)])),
            BatchState::Failed
        );
        assert_eq!(
            BatchState::of(&counts(&[(Succeeded, 1), (Cancelled, 1)])),
            BatchState::Cancelled
        );
        assert_eq!(
            BatchState::of(&counts(&[(Succeeded, 2)])),
            BatchState::Succeeded
        );
        assert!(!BatchState::Queued.has_ended() && BatchState::Failed.has_ended());
    }
}
