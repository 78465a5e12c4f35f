"""Apps built on the pipeline: ensembles (later: diagnose, agents)."""
