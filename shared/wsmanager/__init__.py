"""wsmanager: a WebSocket connection manager for services on Kubernetes."""

__version__ = "0.1.0"
