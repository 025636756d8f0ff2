"""The Tornado side of the server: flags, HTTP front, Django thread, endpoints.

``server.py`` is the entry point; see README.md for the architecture.
"""
