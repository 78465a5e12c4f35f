BEGIN TRANSACTION;
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    door TEXT NOT NULL,
    route TEXT NOT NULL,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    stream INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    status INTEGER NOT NULL,
    error TEXT NOT NULL,
    policy TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    answer_sha256 TEXT NOT NULL,
    content TEXT,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO "audit" VALUES(1,1700000000.0,'r1','key_cc5e20d27740','old-key','openai','m','local/m','m','chat',0,3,4,0.25,200,'','[]',12.5,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',NULL,'0000000000000000000000000000000000000000000000000000000000000000','cb146157d81a81bf290294390ff6ab619140f524eef473434b3d10dfa9e2a8d6');
INSERT INTO "audit" VALUES(2,1700000000.0,'r2','key_cc5e20d27740','old-key','openai','m','local/m','m','chat',0,3,4,0.25,200,'','[]',12.5,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',NULL,'cb146157d81a81bf290294390ff6ab619140f524eef473434b3d10dfa9e2a8d6','3ada47e51cd06317c68d58ad5fc82ed9d25df36cd22f7be7a3c65986551099bd');
COMMIT;
