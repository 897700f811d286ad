"""Monitoring: Prometheus metrics, readiness, alerts, quality evaluation and the dashboard.

Monitoring observes and never blocks the request path: figures come from the stats that ride on
the generation stream, alerts are evaluated and delivered by background tasks.
"""
