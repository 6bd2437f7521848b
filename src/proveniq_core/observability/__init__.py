"""Observability: Prometheus metrics and the gauges read at scrape time."""
