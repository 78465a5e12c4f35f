BEGIN TRANSACTION;
CREATE TABLE feedback (
    run_id  TEXT NOT NULL,
    rater   TEXT NOT NULL,
    thumbs  TEXT,
    rating  INTEGER,
    comment TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, rater)
);
INSERT INTO "feedback" VALUES('run_1','old-key','up',NULL,'',1700000001.0);
CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    agent             TEXT NOT NULL,
    model             TEXT NOT NULL,
    door              TEXT NOT NULL,
    principal         TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    created           REAL NOT NULL,
    status            TEXT NOT NULL,
    error             TEXT NOT NULL,
    latency_ms        REAL NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost              REAL NOT NULL,
    stream            INTEGER NOT NULL,
    steps             TEXT NOT NULL,
    tool_calls        TEXT NOT NULL,
    retrieved         TEXT NOT NULL,
    policy            TEXT NOT NULL
);
INSERT INTO "runs" VALUES('run_1','old-agent','m','openai','old-key','key_cc5e20d27740',1700000000.0,'ok','',5.0,1,2,0.0,0,'[]','[]','[]','[]');
CREATE INDEX runs_agent ON runs (agent, created);
CREATE INDEX runs_model ON runs (model, created);
COMMIT;
