from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('llm', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='call',
            name='usage_estimated',
            field=models.BooleanField(default=False, help_text='The server sent no usage: the tokens, and so the cost, are estimated from the text (4 characters a token).'),
        ),
    ]
