"""Observability of the service: Prometheus metrics, structured logs, OpenTelemetry tracing, input drift.

Every object here is created by ``create_app(settings)`` and passed down; no module keeps shared state.
"""
