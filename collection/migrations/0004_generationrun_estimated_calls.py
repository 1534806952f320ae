from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('collection', '0003_dialogue_minhash'),
    ]

    operations = [
        migrations.AddField(
            model_name='generationrun',
            name='estimated_calls',
            field=models.PositiveIntegerField(default=0),
        ),
    ]
