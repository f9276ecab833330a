"""Numbered schema migrations of the history store.

Each entry moves the schema from version N-1 to N and is applied once, in order, inside
one transaction, when the executor opens the store. Never edit a released migration:
add the next number. Table and column names of ``runs``, ``stages``, ``metrics``,
``artifacts``, ``evidence`` and ``trials`` are the public contract for users' SQL
(the manual's history reference): add columns, rename none.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,
    plan VARCHAR,
    plan_hash VARCHAR,
    status VARCHAR,            -- SCHEDULED RUNNING FINISHED FAILED KILLED
    start_time TIMESTAMP,      -- UTC
    end_time TIMESTAMP,
    graph JSON,                -- the stage graph as executed
    est_gpu_hours DOUBLE,
    gpu_hours DOUBLE,
    pid INTEGER,               -- the executor's process id
    host VARCHAR,
    error VARCHAR
);
CREATE TABLE stages (
    run_id VARCHAR,
    stage_id VARCHAR,
    kind VARCHAR,
    status VARCHAR,            -- PENDING RUNNING FINISHED FAILED SKIPPED CACHED KILLED
    attempt INTEGER,           -- 1 + earlier executions of the same (stage_id, cache_key)
    cache_key VARCHAR,
    start_time TIMESTAMP,
    end_time TIMESTAMP,
    est_gpu_hours DOUBLE,
    gpu_hours DOUBLE,          -- wall hours x GPUs the stage asked for
    error VARCHAR,             -- one-line reason, then the log tail
    policy VARCHAR,
    teacher VARCHAR,
    needs VARCHAR[],
    position INTEGER,          -- place in the graph's dependency order
    gpus INTEGER,
    wall_s DOUBLE,
    pid INTEGER,               -- runner process (its own process group)
    heartbeat TIMESTAMP,       -- refreshed by the executor while the stage runs
    exit_code INTEGER,
    output_dir VARCHAR,
    log_path VARCHAR,
    metrics_path VARCHAR,
    metrics_offset BIGINT,     -- bytes of metrics_path already in `metrics`
    PRIMARY KEY (run_id, stage_id)
);
CREATE TABLE metrics (
    run_id VARCHAR,
    stage_id VARCHAR,
    attempt INTEGER,
    step BIGINT,
    key VARCHAR,
    value DOUBLE,              -- NULL where the runner reported NaN/inf
    time TIMESTAMP,
    cache_key VARCHAR
);
CREATE TABLE artifacts (
    run_id VARCHAR,
    stage_id VARCHAR,
    name VARCHAR,
    uri VARCHAR,
    sha256 VARCHAR,            -- of the file; of a directory: over its files' paths and hashes
    bytes BIGINT,
    attempt INTEGER,
    cache_key VARCHAR,
    time TIMESTAMP
);
CREATE TABLE evidence (
    run_id VARCHAR,
    stage_id VARCHAR,
    model VARCHAR,
    source VARCHAR,
    prompt_index BIGINT,
    samples INTEGER,
    correct INTEGER,
    time TIMESTAMP
);
CREATE TABLE trials (
    run_id VARCHAR,
    number INTEGER,
    structure VARCHAR,
    params JSON,
    value DOUBLE,
    gpu_hours DOUBLE,
    feasible BOOLEAN,
    extra JSON
);
-- Resumed stages re-log the steps after their last checkpoint; keep the newest attempt
-- of each (stage content, key, step) so curves are clean. The raw table keeps all.
-- Most stages ran once: only those with several attempts pay for the window (3x faster
-- than one window over everything at a million rows).
CREATE VIEW metrics_latest AS
WITH resumed AS (
    SELECT stage_id, cache_key FROM metrics GROUP BY ALL HAVING min(attempt) < max(attempt))
SELECT m.* FROM metrics m ANTI JOIN resumed r
    ON m.stage_id = r.stage_id AND m.cache_key IS NOT DISTINCT FROM r.cache_key
UNION ALL BY NAME
SELECT * FROM (
    SELECT m.* FROM metrics m SEMI JOIN resumed r
        ON m.stage_id = r.stage_id AND m.cache_key IS NOT DISTINCT FROM r.cache_key)
QUALIFY attempt = max(attempt) OVER (PARTITION BY stage_id, cache_key, key, step);
"""),
    (2, """
-- Where each stage attempt ran: one row per node (Ray bundle, Slurm node) of an attempt.
-- job_id is what a restarted executor re-attaches to (a Ray actor name prefix, a Slurm
-- job id, a local pid); task_id names the piece on that node.
CREATE TABLE placements (
    run_id VARCHAR,
    stage_id VARCHAR,
    attempt INTEGER,
    backend VARCHAR,           -- local ray slurm
    job_id VARCHAR,
    node VARCHAR,
    gpus INTEGER,
    task_id VARCHAR,
    status VARCHAR,            -- RUNNING, then the attempt's end status
    error VARCHAR,             -- first line of why the attempt ended, if it failed
    start_time TIMESTAMP,
    end_time TIMESTAMP
);
"""),
    (3, """
-- Adaptive execution (`execute --adaptive`): every decision of a session, in order. A
-- session is one plan's pilots and its final run; run_id is the run a row is about
-- (a pilot's or the final run; NULL for a decision made between runs).
CREATE TABLE decisions (
    session VARCHAR,
    seq INTEGER,               -- order within the session (a resumed session continues it)
    time TIMESTAMP,
    plan_hash VARCHAR,
    kind VARCHAR,              -- candidates, round, pilot, prune, choose, finished
    run_id VARCHAR,
    candidates JSON,           -- [{label, median, low, high, mean, p_best, voi, gpu_hours}]
    evidence JSON,             -- what the decision used (pilot curves, holdout accuracies)
    chosen VARCHAR,
    predicted_median DOUBLE,
    predicted_low DOUBLE,
    predicted_high DOUBLE,
    why VARCHAR
);
"""),
    (4, """
-- One row per (session, seq): two executors must not both write a session's next decision.
CREATE UNIQUE INDEX decisions_session_seq ON decisions (session, seq);
"""),
]

LATEST = MIGRATIONS[-1][0]


def migrate(con) -> int:
    """Bring the schema of an open writable connection up to date; return its version."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
    for version, sql in MIGRATIONS:
        if version <= current:
            continue
        con.execute("BEGIN")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = version
    return current
