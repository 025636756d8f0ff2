"""Views that only the tests use: slow, failing, and session-state-leaving ones."""
