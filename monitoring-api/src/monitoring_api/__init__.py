"""Monitoring API: rolling-stats queries, Socket.IO live pushes, alert webhooks, dashboard."""
