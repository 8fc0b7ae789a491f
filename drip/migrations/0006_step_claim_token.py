from django.db import migrations


class Migration(migrations.Migration):
    """One name for one idea: the token a claim writes and later writes are guarded by is
    `claim_token` on Step as on Message."""

    dependencies = [
        ("drip", "0005_drop_redundant_fk_indexes"),
    ]

    operations = [
        migrations.RenameField(model_name="step", old_name="dispatch_token", new_name="claim_token"),
    ]
