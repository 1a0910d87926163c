"""The REST API (FastAPI): app, typed schemas, token auth, request limits, dashboard, server."""
