"""Small builders for test data. They write through the ORM, as the app does; no mocks."""
from baize_eval.llm.models import Endpoint, ModelPrice
from collection.models import Dialogue, SeedSet, Seed, SelfChatTemplate, normalize_seed_text, seed_hash

DEFAULT_TURNS = [
    {"role": "human", "text": "How do I keep basil alive indoors?"},
    {"role": "ai", "text": "Give it a sunny window, water when the topsoil is dry, and pinch off flowers."},
    {"role": "human", "text": "How often should I fertilize it?"},
    {"role": "ai", "text": "Every two to four weeks with a diluted liquid fertilizer during the growing season."},
]


def make_seed_set(name="garden", **fields):
    return SeedSet.objects.create(name=name, **fields)


def make_seeds(seed_set, texts):
    return Seed.objects.bulk_create(
        Seed(seed_set=seed_set, text=normalize_seed_text(t), text_hash=seed_hash(normalize_seed_text(t))) for t in texts
    )


def make_dialogue(seed_set, turns=None, topic="Basil indoors", **fields):
    dialogue = Dialogue(seed_set=seed_set, topic=topic, original_turns=list(turns or DEFAULT_TURNS), **fields)
    dialogue.set_turns(list(turns or DEFAULT_TURNS))
    dialogue.save()
    return dialogue


def make_endpoint(base_url="http://127.0.0.1:9/v1", name="local", **fields):
    return Endpoint.objects.create(name=name, base_url=base_url, api_key_env="", **fields)


def make_price(model="fake-model", prompt="1.00", completion="2.00"):
    return ModelPrice.objects.create(model=model, prompt_usd_per_mtok=prompt, completion_usd_per_mtok=completion)


def make_template(mode="transcript", name="baize", **fields):
    from collection.templates_default import default_template_fields

    data = default_template_fields(mode)
    data.update(fields)
    return SelfChatTemplate.objects.create(name=name, **data)
