from django.urls import include, path

from drip.admin import site as console
from drip.doors import api, status
from drip.doors.inbound import twilio_webhooks, unsubscribe
from drip.doors.inbound.email_reports import anymail_urlpatterns
from drip.ops import health

urlpatterns = [
    path("admin/", console.urls),
    path("api/events", api.events, name="api-events"),
    path("api/events/schema", api.events_schema, name="api-events-schema"),
    # The same door with a trailing slash: APPEND_SLASH cannot redirect a POST.
    path("api/events/", api.events),
    # A registration's story for producers (drip/doors/status.py); health and metrics (drip/ops/health.py).
    path("api/registrations/<str:registration_id>", status.registration_status, name="api-registration-status"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", health.metrics, name="metrics"),
    # Inbound (drip/doors/inbound/): the RFC 8058 unsubscribe link (built with its final slash),
    # anymail's tracking webhooks, and Twilio's status and inbound callbacks.
    path("u/<str:token>/", unsubscribe.unsubscribe, name="unsubscribe"),
    path("u/<str:token>", unsubscribe.unsubscribe),  # a link whose final slash a mail client dropped
    path("anymail/", include((anymail_urlpatterns(), "anymail"))),
    path("webhooks/twilio/status/", twilio_webhooks.status_callback, name="twilio-status"),
    path("webhooks/twilio/inbound/", twilio_webhooks.inbound_sms, name="twilio-inbound"),
    # Without the slash too: a console-typed URL must not meet APPEND_SLASH's POST error.
    path("webhooks/twilio/status", twilio_webhooks.status_callback),
    path("webhooks/twilio/inbound", twilio_webhooks.inbound_sms),
]
