from django.apps import AppConfig


class DripConfig(AppConfig):
    name = "drip"
    verbose_name = "Drip engine"

    def ready(self) -> None:
        from anymail.signals import tracking
        from django.core import checks

        from . import dbtime
        from .inbound.checks import compliance_checks, deploy_checks
        from .inbound.email_reports import on_tracking

        # Email delivery reports arrive through anymail's webhooks as this signal.
        tracking.connect(on_tracking, dispatch_uid="drip.inbound.on_tracking")
        checks.register(compliance_checks, "drip")
        checks.register(deploy_checks, "drip", deploy=True)
        # timestamptz columns read by psycopg's C loader (drip/dbtime.py).
        dbtime.connect()
