CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    client_token TEXT UNIQUE,  -- 'OWNER:TOKEN': one owner's token never finds another's batch
    manifest_sha256 TEXT NOT NULL,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    turn INTEGER NOT NULL DEFAULT 0,
    queued INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT ''  -- the identity that submitted it
);
CREATE INDEX IF NOT EXISTS batches_ready ON batches (priority DESC, turn) WHERE queued > 0;
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL REFERENCES batches(id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    iterations INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    attempt_limit INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0,
    deadline_ms INTEGER,
    worker TEXT,
    iteration INTEGER NOT NULL DEFAULT 0,
    loss_content REAL NOT NULL DEFAULT 0,
    loss_style REAL NOT NULL DEFAULT 0,
    loss_tv REAL NOT NULL DEFAULT 0,
    loss_total REAL NOT NULL DEFAULT 0,
    checkpoint_key TEXT,
    result_key TEXT,
    result_attempt INTEGER,
    sidecar_key TEXT,
    error TEXT,
    version INTEGER NOT NULL DEFAULT 0,  -- bumped by every change (see BUMP)
    expiries INTEGER NOT NULL DEFAULT 0,  -- leases that ran out: each spends its attempt
    expired_workers TEXT NOT NULL DEFAULT '',  -- whose they were, for the error
    started_ms INTEGER,  -- when the latest attempt was leased
    ended_ms INTEGER,  -- when it ended (NULL while it runs)
    UNIQUE (batch_id, name)
) WITHOUT ROWID;
-- Rows stay small (specs live apart and are only read), and ids sort by batch and
-- sequence, so the jobs a group commit touches share pages.
CREATE TABLE IF NOT EXISTS specs (
    job_id TEXT PRIMARY KEY,
    spec BLOB NOT NULL
) WITHOUT ROWID;
-- Only queued jobs are indexed for leasing: a lease removes one entry, and the jobs
-- that run or ended cost the index nothing. (Per-batch lookups use the unique
-- (batch_id, name) index.)
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (batch_id, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_deadline ON jobs (deadline_ms) WHERE deadline_ms IS NOT NULL;
-- batches.queued follows the jobs in state 'queued', so leasing finds a batch with work
-- through an index instead of scanning jobs.
CREATE TRIGGER IF NOT EXISTS jobs_queued_count AFTER UPDATE OF state ON jobs
WHEN (old.state = 'queued') <> (new.state = 'queued')
BEGIN
    UPDATE batches SET queued = queued + (CASE WHEN new.state = 'queued' THEN 1 ELSE -1 END)
    WHERE id = new.batch_id;
END;
-- Jobs per batch and state: set at submit and moved by the trigger below, so a batch's
-- counts are read, not counted, however many jobs it has (the batches page asks for
-- hundreds of batches every few seconds).
CREATE TABLE IF NOT EXISTS batch_counts (
    batch_id TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (batch_id, state)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS jobs_state_count AFTER UPDATE OF state ON jobs
WHEN old.state <> new.state
BEGIN
    UPDATE batch_counts SET n = n - 1 WHERE batch_id = old.batch_id AND state = old.state;
    INSERT INTO batch_counts (batch_id, state, n) VALUES (new.batch_id, new.state, 1)
        ON CONFLICT (batch_id, state) DO UPDATE SET n = n + 1;
END;
-- Which jobs must succeed before which (a job waits on each `after_id`): rows only for
-- jobs submitted with dependencies; the coordinator refused cycles at submit.
CREATE TABLE IF NOT EXISTS job_deps (
    job_id TEXT NOT NULL,
    after_id TEXT NOT NULL,
    PRIMARY KEY (job_id, after_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_deps_after ON job_deps (after_id, job_id);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (batch_id) WHERE state = 'waiting';
CREATE TABLE IF NOT EXISTS worker_failures (
    worker TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (worker, batch_id)
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    device TEXT NOT NULL,
    gpu_model TEXT NOT NULL,
    gpu_memory_bytes INTEGER NOT NULL,
    slots INTEGER NOT NULL,
    registered_ms INTEGER NOT NULL,
    identity TEXT NOT NULL DEFAULT '',  -- the identity that registered it; only it may use it
    max_job_memory_bytes INTEGER NOT NULL DEFAULT 0  -- what one job may take on it; 0: not said
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('id', 0);
