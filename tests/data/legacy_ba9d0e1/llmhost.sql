BEGIN TRANSACTION;
CREATE TABLE api_key_secrets (
    hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    hint TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL
);
INSERT INTO "api_key_secrets" VALUES('fe61e88b5b62275604bb741caff69194d8737b6328a5a83f4ef9c1cb222ffdc5','key_cc5e20d27740','llmh_MIax…',1.79627667936479640002e+09,NULL);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    models TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    budget REAL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    policy TEXT
);
INSERT INTO "api_keys" VALUES('key_cc5e20d27740','old-key','["inference", "models:read"]','[]',10,NULL,1.5,1.79627667936479640002e+09,NULL,NULL,NULL);
CREATE TABLE models (
            name            TEXT PRIMARY KEY,
            digest          TEXT NOT NULL,
            path            TEXT NOT NULL,
            size_bytes      BIGINT NOT NULL,
            architecture    TEXT NOT NULL,
            parameter_count BIGINT NOT NULL,
            quantization    TEXT NOT NULL,
            context_length  INTEGER,
            chat_template   TEXT,
            license         TEXT,
            source          TEXT NOT NULL,
            created_at      TEXT NOT NULL
        );
INSERT INTO "models" VALUES('old:model','sha256:0000000000000000000000000000000000000000000000000000000000000000','/nonexistent/blob',1,'llama',1,'F32',512,NULL,NULL,'test','2026-12-01T00:00:00+00:00');
CREATE TABLE response_items (
            response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            source TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (response_id, position)
        );
INSERT INTO "response_items" VALUES('resp_old',0,'in_1','input','{"id":"in_1","type":"message"}');
INSERT INTO "response_items" VALUES('resp_old',1,'msg_1','output','{"id":"msg_1","type":"message"}');
CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            created_at REAL NOT NULL,
            body TEXT NOT NULL
        );
INSERT INTO "responses" VALUES('resp_old','old-key',1700000000.0,'{"id":"resp_old","created_at":1700000000,"output":[{"id":"msg_1","type":"message"}]}');
CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
INSERT INTO "schema_version" VALUES('responses',1);
INSERT INTO "schema_version" VALUES('models',1);
CREATE TABLE usage (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    target_model TEXT NOT NULL,
    tier INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    cost REAL NOT NULL,
    status TEXT NOT NULL,
    api_key TEXT,
    stream INTEGER NOT NULL,
    door TEXT NOT NULL DEFAULT '',
    principal TEXT NOT NULL DEFAULT ''
);
INSERT INTO "usage" VALUES(1,1700000000.5,'m','local','m',0,3,4,0,12.5,0.25,'ok','key_cc5e20d27740',0,'openai','old-key');
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked IS NULL;
CREATE INDEX usage_ts ON usage (ts);
CREATE INDEX response_items_item_id ON response_items (item_id);
CREATE INDEX models_digest ON models (digest);
COMMIT;
