"""Agents: a model or route with a system prompt, sampling defaults, a governance policy, datasets,
tools and a key scope; chatted with from every dialect by naming the agent as the model.

- :mod:`.spec`: the definition and its validation; :mod:`.store`: agents, runs, feedback (SQLite);
- :mod:`.registry`: saving (checked against the server) and fast lookups;
- :mod:`.stage`: the pipeline's "agents" stage (the agent's request; a run record for every request);
- :mod:`.loop`: the tool loop around the gateway; :mod:`.toolbox`: MCP tools (own and remote);
- :mod:`.scorecard`: success, latency, tokens, cost, compliance, tools, retrieval, feedback.
"""

from llmhost.apps.agents.loop import AgentGenerator
from llmhost.apps.agents.registry import Agents, Checks, safe_exists
from llmhost.apps.agents.scorecard import scorecard
from llmhost.apps.agents.spec import AgentSpec
from llmhost.apps.agents.stage import CITATIONS_KEY, RUN_HEADER, AgentStage
from llmhost.apps.agents.store import AgentStore, Feedback, RunRecord
from llmhost.apps.agents.toolbox import OwnTools, Toolbox

__all__ = [
    "CITATIONS_KEY",
    "RUN_HEADER",
    "AgentGenerator",
    "AgentSpec",
    "AgentStage",
    "AgentStore",
    "Agents",
    "Checks",
    "Feedback",
    "OwnTools",
    "RunRecord",
    "Toolbox",
    "safe_exists",
    "scorecard",
]
