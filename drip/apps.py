from django.apps import AppConfig


class DripConfig(AppConfig):
    name = "drip"
    verbose_name = "Drip engine"
