"""The diagnose engine: diagnostics documents in, ranked and validated repair suggestions out."""
