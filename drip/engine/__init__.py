"""Registrations and their steps: planning, completion, the step task, direct sends and
notices, and the services every door calls (the only way a funnel starts, moves or stops)."""
