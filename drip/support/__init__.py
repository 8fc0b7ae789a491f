"""Plumbing every layer may use, importing nothing of Drip's: log lines and masks, bearer tokens,
set-based row writes, the datetime loader, FieldError."""
