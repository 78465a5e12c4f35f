BEGIN TRANSACTION;
CREATE TABLE agents (
    name    TEXT PRIMARY KEY,
    spec    TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
INSERT INTO "agents" VALUES('old-agent','{"name":"old-agent","model":"m","description":"","system":"be brief","sampling":{"temperature":null,"top_p":null,"top_k":null,"max_tokens":null,"seed":null},"policy":null,"datasets":[],"retrieval_k":4,"tools":[],"mcp_servers":[],"tool_groups":[],"tool_choice":"auto","max_steps":4,"max_seconds":60.0,"scope":null}',1.79627667948841881744e+09,1.79627667948841881744e+09);
COMMIT;
