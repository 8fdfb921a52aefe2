"""`latentsync serve`: lip-sync as an HTTP service with a job queue kept on disk (see api.py)."""
