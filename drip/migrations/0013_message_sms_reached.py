from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models
from django.db.migrations.operations import AddIndex


class AddIndexWithoutLockingWrites(AddIndexConcurrently):
    """On PostgreSQL `CREATE INDEX CONCURRENTLY`: a plain CREATE INDEX would hold writes to
    the message table (every claim and send) for as long as it scans it. Elsewhere (SQLite)
    a plain AddIndex."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [
        ('drip', '0012_worker_holds'),
    ]

    operations = [
        AddIndexWithoutLockingWrites(
            model_name='message',
            index=models.Index(condition=models.Q(('channel', 'sms'), ('status__in', ['sent', 'delivered'])), fields=['to'], name='message_sms_reached'),
        ),
    ]
