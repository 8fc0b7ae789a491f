"""For operators' monitors: /healthz and /metrics."""
