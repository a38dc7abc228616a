"""The demo App: a small HTTP service storing rows in PostgreSQL (``python -m include.demo_app``)."""
