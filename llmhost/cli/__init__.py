"""The ``llmhost`` command line."""
