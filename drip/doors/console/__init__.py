"""The operator's console on top of the Django admin: a registration's timeline, an event's
funnel, what needs attention, template previews. Read-only helpers and the admin's views;
every change still goes through drip.engine.services (or drip.engine.direct for a test send)."""
