"""Trust: API keys, scopes, limits, budgets, governance policy and the audit log."""
