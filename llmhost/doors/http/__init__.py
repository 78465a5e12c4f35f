"""The HTTP server: app factory, request gate, and what every HTTP door shares."""
