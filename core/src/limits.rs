//! Bounds that more than one component checks: the manifest reader refuses what the
//! coordinator would refuse, with the same numbers.

/// Most attempts a batch may allow each job.
pub const MAX_ATTEMPTS: u32 = 100;
/// Most jobs one batch may hold (the coordinator's default cap, and a manifest's limit).
pub const MAX_JOBS_PER_BATCH: u32 = 100_000;
