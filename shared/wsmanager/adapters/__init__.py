"""Adapters behind the ports: memory, SQLite, Redis (and Dapr, Knative in their own modules)."""
