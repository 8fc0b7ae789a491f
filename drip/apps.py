from django.apps import AppConfig


class DripConfig(AppConfig):
    name = "drip"
    verbose_name = "Drip engine"

    def ready(self) -> None:
        from anymail.signals import tracking
        from django.core import checks

        from drip.doors.inbound.checks import compliance_checks, deploy_checks
        from drip.doors.inbound.email_reports import on_tracking
        from drip.support import dbtime

        # Email delivery reports arrive through anymail's webhooks as this signal.
        tracking.connect(on_tracking, dispatch_uid="drip.inbound.on_tracking")
        checks.register(compliance_checks, "drip")
        checks.register(deploy_checks, "drip", deploy=True)
        # timestamptz columns read by psycopg's C loader (drip/support/dbtime.py).
        dbtime.connect()
