"""Routing: public model names -> targets, strategies, fallback chains, circuit breakers, cost."""
