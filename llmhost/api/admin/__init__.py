"""Admin routes (``/api/...``): what is loaded, load/unload, and model management."""
