"""Serving: the HTTP API (FastAPI, built by ``create_app``) and the web pages."""
