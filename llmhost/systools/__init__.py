"""Sandboxed system tools in opt-in groups (files, web fetch, databases, processes and resources,
hashing and secret scans): plain Python over typed inputs and outputs, served as MCP tools by
``llmhost.doors.mcp`` and usable by apps (agents). Each group is off until its config section enables
it, needs a scope of its own (``tools:<group>``) and refuses anything outside its sandbox with a
:class:`~llmhost.errors.RefusedError` whose message says why."""
