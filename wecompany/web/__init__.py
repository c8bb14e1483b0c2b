"""The HTTP side: one twisted.web Site for health, the REST API and WebSocket signaling."""
