"""Where the outside comes in: the event and status APIs, intake, the inbound webhooks and
unsubscribe page, the console's own pages, and the HTTP middleware and access log."""
