"""Automatic filters: each rule flags a bad case and leaves a clean one alone; near-duplicates across a corpus."""
import random
import subprocess
import sys

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from django.conf import settings

from collection.filters import (
    MINHASH_PERM, RULES, check_dialogue, filter_counts, flag_dialogue, flag_near_duplicates, minhash_bytes,
    minhash_signatures, near_duplicate_groups,
)
from collection.filters import LSH_WEIGHTS, _minhash_permutations, _shingle_hashes, lsh_bands
from collection.models import Dialogue, DialogueFlag
from tests.factories import DEFAULT_TURNS, make_dialogue, make_seed_set, make_seeds

CLEAN = {"turns": DEFAULT_TURNS, "parse_error": "", "finish_reason": "stop",
         "seed_text": "How do I keep basil alive indoors?", "language": "en", "min_turns": 2}


def rules(**changes):
    return [rule for rule, _ in check_dialogue(**{**CLEAN, **changes})]


def chat(*texts):
    return [{"role": "human" if i % 2 == 0 else "ai", "text": text} for i, text in enumerate(texts)]


def test_it_leaves_a_clean_dialogue_unflagged():
    assert check_dialogue(**CLEAN) == []


def test_it_flags_malformed_output():
    assert check_dialogue(**{**CLEAN, "parse_error": "line 3: two human turns in a row"})[0] == (
        "malformed", "parse error: line 3: two human turns in a row")
    assert "malformed" in rules(turns=[])
    assert check_dialogue(**{**CLEAN, "turns": chat("Hi", "  ")})[0] == ("malformed", "turn 2 is empty")


def test_it_flags_too_few_turns():
    assert rules(turns=chat("How do I keep basil alive?", "Sun and water."), min_turns=4) == ["too_few_turns"]
    assert rules(turns=chat("How do I keep basil alive?", "Sun and water."), min_turns=2) == []
    assert ("too_few_turns", "0 turn(s), fewer than 2") in check_dialogue(**{**CLEAN, "turns": []})


def test_it_flags_truncated_output():
    assert rules(finish_reason="length") == ["truncated"]
    assert rules(finish_reason="stop") == []


@pytest.mark.parametrize("answer", [
    "As an AI language model, I don't have the ability to grow plants, but here are some tips.",
    "I'm sorry, but I cannot help with that request.",
    "I’m sorry, but I can’t provide medical advice.",
    "I am an AI and cannot give personal opinions about gardening.",
    "En tant que modèle de langage, je ne peux pas avoir d'avis personnel.",
    "Je suis désolé, mais je ne peux pas répondre à cette question.",
    "Als KI-Sprachmodell habe ich keine persönlichen Erfahrungen mit Pflanzen.",
    "Es tut mir leid, aber ich kann Ihnen dabei nicht helfen.",
    "作为一个人工智能，我没有个人观点。",
    "抱歉，我无法回答这个问题。",
])
def test_it_flags_refusal_boilerplate_in_several_languages(answer):
    hits = check_dialogue(**{**CLEAN, "turns": chat("Can you help me?", answer), "language": ""})
    assert [rule for rule, _ in hits] == ["refusal"]
    assert hits[0][1].startswith('turn 2: "')


@pytest.mark.parametrize("answer", [
    "I'm sorry to hear your basil died. Give it more light and water it less often.",
    "An AI model can predict plant growth, but for basil a sunny window is enough.",
    "Je suis désolé d'apprendre cela ! Arrosez le basilic quand la terre est sèche.",
    "Es tut mir leid, das zu hören. Stell das Basilikum an ein sonniges Fenster.",
    "很抱歉听到这个消息。把罗勒放在阳光充足的地方。",
])
def test_it_does_not_flag_ordinary_apologies_or_mentions_of_ai(answer):
    assert rules(turns=chat("My basil died, any advice?", answer), language="") == []


def test_it_looks_for_refusals_in_ai_turns_only():
    assert rules(turns=chat("As an AI language model, what would you say?", "I would say water it weekly.")) == []


ENGLISH = "Basil likes a warm, sunny spot. Water it when the top of the soil feels dry, and pinch off the flowers."
FRENCH = ("Le basilic aime un endroit chaud et ensoleillé. Arrosez-le lorsque le dessus de la terre est sec, "
          "et pincez les fleurs pour qu'il reste touffu.")
GERMAN = ("Basilikum mag einen warmen, sonnigen Platz. Gieße es, wenn die Erde oben trocken ist, und knipse die "
          "Blüten ab, damit die Pflanze buschig bleibt.")
CHINESE = "罗勒喜欢温暖、阳光充足的地方。当土壤表面干燥时浇水，并摘掉花朵，这样植物会长得更茂盛。它不喜欢寒冷的窗台。"


@pytest.mark.parametrize("language,text", [("en", ENGLISH), ("fr", FRENCH), ("de", GERMAN), ("zh", CHINESE)])
def test_it_accepts_dialogues_in_the_runs_language(language, text):
    assert rules(turns=chat("Basil?", text), language=language) == []


@pytest.mark.parametrize("language,text,detected", [
    ("en", FRENCH, "fr"), ("en", GERMAN, "de"), ("en", CHINESE, "zh"), ("fr", ENGLISH, "en"), ("zh", GERMAN, "de"),
    ("de", FRENCH, "fr"),
])
def test_it_flags_dialogues_in_another_language(language, text, detected):
    hits = dict(check_dialogue(**{**CLEAN, "turns": chat("Basil?", text), "language": language}))
    assert set(hits) == {"wrong_language"}
    assert hits["wrong_language"].startswith(f"AI text looks like '{detected}'")
    assert hits["wrong_language"].endswith(f"expected '{language}'")


def test_it_does_not_judge_the_language_of_very_short_text_or_code():
    assert rules(turns=chat("Merci ?", "Bien sûr, avec plaisir."), language="en") == []
    code = "```python\nfor plante in jardin:\n    arroser(plante, quantité=2)\n    print('fini', plante)\n```\nDone."
    assert rules(turns=chat("Code?", code), language="en") == []
    assert rules(turns=chat("Basil?", FRENCH), language="fr-CA") == []


def test_it_flags_a_dialogue_that_only_echoes_its_seed():
    seed = "What is the best way to keep fresh basil alive on a kitchen windowsill in winter?"
    echo = chat(seed, "The best way to keep fresh basil alive on a kitchen windowsill in winter?")
    hits = dict(check_dialogue(**{**CLEAN, "turns": echo, "seed_text": seed}))
    assert set(hits) == {"echoes_seed"}
    assert "copied from the seed" in hits["echoes_seed"]
    answer = chat(seed, "Put it in the sunniest window, keep it away from cold glass, and water sparingly.")
    assert rules(turns=answer, seed_text=seed) == []
    assert rules(turns=echo, seed_text="") == []


@pytest.mark.django_db
def test_it_writes_flags_and_replaces_them_when_the_dialogue_is_checked_again():
    seed_set = make_seed_set()
    dialogue = make_dialogue(seed_set, finish_reason="length", turns=chat("Hi", "As an AI language model, I cannot."))
    DialogueFlag.objects.create(dialogue=dialogue, rule="near_duplicate", reason="near-duplicate of dialogue 1")

    assert flag_dialogue(dialogue, min_turns=4) == ["too_few_turns", "truncated", "refusal"]
    dialogue.refresh_from_db()
    assert dialogue.is_flagged
    stored = dict(dialogue.flags.values_list("rule", "reason"))
    assert set(stored) == {"too_few_turns", "truncated", "refusal", "near_duplicate"}
    assert stored["refusal"] == 'turn 2: "As an AI language model"'

    dialogue.finish_reason = "stop"
    dialogue.set_turns(DEFAULT_TURNS)
    dialogue.save()
    assert flag_dialogue(dialogue) == []
    assert set(dialogue.flags.values_list("rule", flat=True)) == {"near_duplicate"}  # the corpus pass owns it
    dialogue.refresh_from_db()
    assert dialogue.is_flagged

    DialogueFlag.objects.filter(dialogue=dialogue).delete()
    assert flag_dialogue(dialogue) == []
    dialogue.refresh_from_db()
    assert not dialogue.is_flagged


@pytest.mark.django_db
def test_it_checks_the_echo_against_the_seed_or_the_topic():
    seed_set = make_seed_set()
    [seed] = make_seeds(seed_set, ["How do I repot a cactus without getting hurt?"])
    echo = chat("How do I repot a cactus?", "How do I repot a cactus without getting hurt?")
    from_seed = make_dialogue(seed_set, turns=echo, topic="Cactus", seed=seed)
    assert flag_dialogue(from_seed) == ["echoes_seed"]
    from_topic = make_dialogue(seed_set, turns=echo, topic="How do I repot a cactus without getting hurt?")
    assert flag_dialogue(from_topic) == ["echoes_seed"]
    assert flag_dialogue(from_topic, seed_text="Cactus care") == []


def random_corpus(count, *, words=200, seed=7):
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
                  for _ in range(3000)]
    return [" ".join(rng.choices(vocabulary, k=words)) for _ in range(count)], rng


def near_copy(text, rng, changes=1):
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = "changed"
    return " ".join(words)


def test_it_groups_near_duplicates_keeping_the_lowest_id():
    texts, rng = random_corpus(6)
    items = [(10, texts[0]), (11, texts[1]), (12, near_copy(texts[0], rng)), (13, texts[0]), (5, texts[2]),
             (6, near_copy(texts[2], rng)), (7, ""), (8, ""), (9, near_copy(texts[3], rng, changes=80)), (14, texts[3])]
    assert near_duplicate_groups(items, threshold=0.85, num_perm=128) == {12: 10, 13: 10, 6: 5}


def test_it_clusters_near_duplicates_transitively():
    texts, rng = random_corpus(1, words=300)
    first = texts[0]
    second = near_copy(first, rng, changes=3)
    third = near_copy(second, rng, changes=3)
    groups = near_duplicate_groups([(3, third), (2, second), (1, first)], threshold=0.85, num_perm=128)
    assert groups == {2: 1, 3: 1}


def test_it_computes_the_same_minhash_as_datasketch():
    very_long = " ".join(f"w{i % 7000}" for i in range(60_000))  # more shingles than one numpy pass takes
    texts = ["the quick brown fox jumps over the lazy dog", "basil", "罗勒喜欢温暖的地方", "a b c " * 50, very_long]
    for text, signature in zip(texts, minhash_signatures(texts, num_perm=64)):
        reference = MinHash(num_perm=64, seed=1, scheme="affine32", hashfunc=int)
        reference.update_batch([int(h) for h in _shingle_hashes(text)])
        assert np.array_equal(reference.hashvalues, signature)


@pytest.mark.parametrize("num_perm", [16, 128, 300])
def test_it_draws_the_permutations_datasketch_draws(num_perm):
    a, b = _minhash_permutations(num_perm)
    reference = MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations
    assert np.array_equal(a, reference[0]) and np.array_equal(b, reference[1])


@pytest.mark.parametrize("num_perm", [64, 128])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95])
def test_it_picks_the_lsh_bands_datasketch_picks(num_perm, threshold):
    reference = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    assert lsh_bands(threshold, num_perm) == (reference.b, reference.r)


def test_it_does_not_import_datasketch_or_scipy_to_find_near_duplicates():
    # datasketch's package imports scipy: 64 MB in every worker, a fifth of the export's memory budget.
    code = ("import sys; from collection.filters import near_duplicate_groups; "
            "near_duplicate_groups([(1, 'a b c d e'), (2, 'a b c d e')]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('datasketch', 'scipy')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=settings.BASE_DIR)
    assert result.stdout.strip() == "[]"


@pytest.mark.django_db
def test_it_flags_planted_near_duplicates_across_a_corpus_and_is_idempotent():
    seed_set = make_seed_set()
    texts, rng = random_corpus(200)
    dialogues = [make_dialogue(seed_set, turns=chat(f"Question {i}?", text)) for i, text in enumerate(texts)]
    originals = [dialogues[i] for i in (3, 50, 120, 199)]
    planted = [make_dialogue(seed_set, turns=chat(f"Question {o.pk} again?", near_copy(o.turns[1]["text"], rng)))
               for o in originals]
    planted.append(make_dialogue(seed_set, turns=list(originals[0].turns)))  # an exact copy
    different = make_dialogue(seed_set, turns=chat("Question?", near_copy(texts[7], rng, changes=60)))
    queryset = Dialogue.objects.filter(seed_set=seed_set)

    assert flag_near_duplicates(queryset) == 5
    flags = dict(DialogueFlag.objects.filter(rule="near_duplicate").values_list("dialogue_id", "reason"))
    expected_kept = [o.pk for o in originals] + [originals[0].pk]
    assert flags == {copy.pk: f"near-duplicate of dialogue {kept} (estimated Jaccard >= 0.85)"
                     for copy, kept in zip(planted, expected_kept)}
    assert set(Dialogue.objects.filter(is_flagged=True).values_list("pk", flat=True)) == {p.pk for p in planted}
    assert different.pk not in flags

    before = list(DialogueFlag.objects.order_by("dialogue_id").values_list("dialogue_id", "rule", "reason"))
    assert flag_near_duplicates(queryset) == 5
    assert list(DialogueFlag.objects.order_by("dialogue_id").values_list("dialogue_id", "rule", "reason")) == before

    # A reviewer rewrites one copy: the next pass drops its flag and is_flagged follows.
    rewritten = planted[1]
    rewritten.set_turns(chat("Something else", texts[100][::-1]))
    rewritten.save()
    assert flag_near_duplicates(queryset) == 4
    rewritten.refresh_from_db()
    assert not rewritten.is_flagged
    assert not rewritten.flags.exists()


@pytest.mark.django_db
def test_it_stores_signatures_and_hashes_only_new_or_edited_dialogues(reviewer):
    from collection.review import review_edit_turn

    seed_set = make_seed_set()
    texts, _ = random_corpus(3)
    one, two, three = (make_dialogue(seed_set, turns=chat("Q?", text)) for text in texts)
    queryset = Dialogue.objects.filter(seed_set=seed_set)
    assert flag_near_duplicates(queryset) == 0
    for dialogue in (one, two, three):
        dialogue.refresh_from_db()
        expected = minhash_bytes(["Q?\n" + dialogue.turns[1]["text"]])[0].tobytes()
        assert bytes(dialogue.minhash) == expected and len(expected) == MINHASH_PERM

    # The stored signature is what the next pass uses: one given `one`'s signature now counts as its copy...
    Dialogue.objects.filter(pk=three.pk).update(minhash=one.minhash)
    assert flag_near_duplicates(queryset) == 1
    assert Dialogue.objects.get(pk=three.pk).flags.get().reason.startswith(f"near-duplicate of dialogue {one.pk} ")
    # ...until its turns change: an edit clears the signature and the next pass hashes the new text.
    review_edit_turn(dialogue=three, actor=reviewer, expected_version=three.version, turn_index=1, text=texts[2] + "!")
    assert Dialogue.objects.get(pk=three.pk).minhash is None
    assert flag_near_duplicates(queryset) == 0
    assert bytes(Dialogue.objects.get(pk=three.pk).minhash) == minhash_bytes(["Q?\n" + texts[2] + "!"])[0].tobytes()


@pytest.mark.django_db
def test_it_keeps_other_rules_flagged_when_the_near_duplicate_flag_goes():
    seed_set = make_seed_set()
    texts, rng = random_corpus(2)
    first = make_dialogue(seed_set, turns=chat("Q?", texts[0]))
    copy = make_dialogue(seed_set, turns=chat("Q?", texts[0]), finish_reason="length")
    assert flag_dialogue(copy, language="") == ["truncated"]
    assert flag_near_duplicates(Dialogue.objects.all()) == 1
    copy.set_turns(chat("Q?", texts[1]))
    copy.save()
    assert flag_near_duplicates(Dialogue.objects.all()) == 0
    copy.refresh_from_db()
    first.refresh_from_db()
    assert copy.is_flagged and not first.is_flagged
    assert list(copy.flags.values_list("rule", flat=True)) == ["truncated"]


@pytest.mark.django_db
def test_it_only_touches_dialogues_in_the_queryset():
    texts, _ = random_corpus(1)
    one, other = make_seed_set("one"), make_seed_set("other")
    a = make_dialogue(one, turns=chat("Q?", texts[0]))
    b = make_dialogue(other, turns=chat("Q?", texts[0]))
    c = make_dialogue(other, turns=chat("Q?", texts[0]))
    assert flag_near_duplicates(Dialogue.objects.filter(seed_set=other)) == 1
    assert flag_near_duplicates(Dialogue.objects.filter(seed_set=one)) == 0
    assert list(DialogueFlag.objects.values_list("dialogue_id", "reason")) == [
        (c.pk, f"near-duplicate of dialogue {b.pk} (estimated Jaccard >= 0.85)")]
    assert not Dialogue.objects.get(pk=a.pk).is_flagged


@pytest.mark.django_db
def test_it_counts_flags_per_rule_in_one_query(django_assert_num_queries):
    one, other = make_seed_set("one"), make_seed_set("other")
    for finish_reason in ("length", "length", "stop"):
        flag_dialogue(make_dialogue(one, finish_reason=finish_reason, turns=chat("Hi", "As an AI language model, no.")))
    flag_dialogue(make_dialogue(other, finish_reason="length"))
    with django_assert_num_queries(1):
        counts = filter_counts(Dialogue.objects.filter(seed_set=one))
    assert counts == {**dict.fromkeys(RULES, 0), "truncated": 2, "refusal": 3}
    assert filter_counts(Dialogue.objects.all())["truncated"] == 3
    assert filter_counts(Dialogue.objects.none()) == dict.fromkeys(RULES, 0)


@pytest.mark.django_db
def test_it_runs_the_near_duplicate_pass_as_a_task_over_one_seed_set():
    from collection.tasks import flag_near_duplicates as task

    texts, _ = random_corpus(1)
    one, other = make_seed_set("one"), make_seed_set("other")
    make_dialogue(one, turns=chat("Q?", texts[0]))
    copy = make_dialogue(one, turns=chat("Q?", texts[0]))
    make_dialogue(other, turns=chat("Q?", texts[0]))
    assert task.name == "collection.flag_near_duplicates"
    assert task.apply(args=[one.pk]).get() == 1
    assert list(DialogueFlag.objects.values_list("dialogue_id", flat=True)) == [copy.pk]
