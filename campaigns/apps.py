from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        # The engine knows no funnel of its own: these tables are the ones it runs.
        from drip.domain.funnels import register

        from .funnels import FUNNELS

        register(*FUNNELS)
