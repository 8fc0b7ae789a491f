# Load the Celery app whenever Django starts (web, shell, management commands), so that
# tasks enqueued from any process go to the configured broker, not Celery's default one.
from celery_app import app as celery_app

__all__ = ["celery_app"]
