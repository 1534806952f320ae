"""Transcript parser: Baize semantics on messy model output (tests/data/transcripts/ holds the samples)."""
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from collection.parsing import ParsedTranscript, parse_transcript, render_transcript

DATA = Path(__file__).parent / "data" / "transcripts"


def sample(name):
    return (DATA / name).read_text(encoding="utf-8")


def roles(parsed):
    return [t["role"] for t in parsed.turns]


def texts(parsed):
    return [t["text"] for t in parsed.turns]


def test_it_parses_a_clean_transcript_and_drops_the_cut_off_human_turn():
    parsed = parse_transcript("[|Human|] Hi there\n[|AI|] Hello!\n[|Human|] How are\n")
    assert parsed == ParsedTranscript(turns=[{"role": "human", "text": "Hi there"}, {"role": "ai", "text": "Hello!"}])
    assert parsed.error == ""


def test_it_drops_prose_before_the_first_human_marker():
    parsed = parse_transcript(sample("prose_before.txt"))
    assert parsed.error == ""
    assert roles(parsed) == ["human", "ai", "human", "ai"]
    assert parsed.turns[0]["text"] == "What is the best way to learn to play the violin as an adult?"
    assert parsed.turns[-1]["text"] == "Most adults sound pleasant after about a year of steady practice."
    assert "Sure!" not in "".join(texts(parsed))


def test_it_keeps_a_complete_last_human_turn_when_asked():
    raw = "[|Human|] Hi\n[|AI|] Hello!\n[|Human|] What's the weather like?"
    assert roles(parse_transcript(raw, drop_trailing_human=False)) == ["human", "ai", "human"]
    assert roles(parse_transcript(raw)) == ["human", "ai"]


def test_it_always_drops_an_empty_trailing_human_turn_as_in_published_baize_data():
    raw = "The conversation between human and AI assistant.\n[|Human|] Hi\n[|AI|] Hello!\n[|Human|] "
    parsed = parse_transcript(raw, drop_trailing_human=False)
    assert parsed.error == ""
    assert texts(parsed) == ["Hi", "Hello!"]


def test_it_does_not_split_on_markers_inside_a_fenced_code_block_or_inline_code():
    parsed = parse_transcript(sample("code_fence.txt"))
    assert parsed.error == ""
    assert roles(parsed) == ["human", "ai", "human", "ai"]
    code_answer = parsed.turns[1]["text"]
    assert "[|AI|] this line is inside the code block and must stay there" in code_answer
    assert "The `[|AI|]` marker in inline code is also just text." in code_answer
    assert code_answer.endswith("also just text.")


def test_it_handles_nested_fences_of_backticks_and_tildes():
    parsed = parse_transcript(sample("nested_fences.txt"))
    assert parsed.error == ""
    assert roles(parsed) == ["human", "ai", "human", "ai"]
    assert "[|Human|] this is quoted, not a new turn" in parsed.turns[1]["text"]
    assert "[|AI|] still quoted" in parsed.turns[1]["text"]
    assert parsed.turns[1]["text"].endswith("That is all there is to it.")
    assert parsed.turns[3]["text"].endswith("still in the tilde block\n~~~\nDone.")


def test_it_does_not_split_on_markers_inside_an_indented_code_block():
    parsed = parse_transcript(sample("indented_code.txt"))
    assert parsed.error == ""
    assert roles(parsed) == ["human", "ai", "human", "ai"]
    assert "    [|AI|] Hi! How can I help you?" in parsed.turns[1]["text"]


def test_it_ignores_markers_in_the_middle_of_a_sentence():
    parsed = parse_transcript(sample("sentence_markers.txt"))
    assert parsed.error == ""
    assert roles(parsed) == ["human", "ai", "human", "ai"]
    assert "mentions [|AI|] or AI: in passing" in parsed.turns[1]["text"]


def test_it_accepts_marker_variants_and_stray_whitespace():
    parsed = parse_transcript(sample("variants.txt"))
    assert parsed.error == ""
    assert texts(parsed) == [
        "Can you recommend a beginner houseplant?",
        "A pothos: it tolerates low light and irregular watering.",
        "What about a cat-safe one?",
        "A spider plant is non-toxic to cats.",
        "Thanks!",
        "Happy to help.",
    ]


def test_it_accepts_crlf_line_endings_and_blank_lines():
    raw = (DATA / "crlf.txt").read_bytes().decode("utf-8")
    assert "\r\n" in raw
    parsed = parse_transcript(raw)
    assert parsed.error == ""
    assert texts(parsed) == [
        "Why is the sky blue?",
        "Rayleigh scattering:\nshorter wavelengths scatter more.",
        "And sunsets?",
        "Light travels through more air, so the blue scatters away.",
    ]
    assert all("\r" not in t for t in texts(parsed))


def test_it_keeps_unicode_text_intact():
    parsed = parse_transcript(sample("unicode.txt"))
    assert parsed.error == ""
    assert parsed.turns[0]["text"] == "如何在家里种植罗勒？ 🌿"
    assert parsed.turns[3]["text"].endswith("مرحبا")
    assert len(parsed.turns) == 4


def test_it_stops_at_an_unknown_marker_keeping_the_good_prefix():
    parsed = parse_transcript(sample("unknown_marker.txt"))
    assert roles(parsed) == ["human", "ai"]
    assert parsed.error == "line 3: unknown marker [|System|]"


def test_it_stops_at_two_human_turns_in_a_row():
    parsed = parse_transcript(sample("two_humans.txt"))
    assert roles(parsed) == ["human", "ai"]
    assert parsed.error == "line 4: two human turns in a row"
    kept = parse_transcript(sample("two_humans.txt"), drop_trailing_human=False)
    assert texts(kept)[-1] == "How old is it?"


def test_it_stops_at_two_ai_turns_in_a_row():
    parsed = parse_transcript("[|Human|] a\n[|AI|] b\n[|AI|] c\n[|Human|] d\n[|AI|] e")
    assert texts(parsed) == ["a", "b"]
    assert parsed.error == "line 3: two ai turns in a row"


def test_it_stops_at_an_empty_turn():
    parsed = parse_transcript("[|Human|] a\n[|AI|] b\n[|Human|]\n[|AI|] c\n")
    assert texts(parsed) == ["a", "b"]
    assert parsed.error == "line 3: empty human turn"
    parsed = parse_transcript("[|Human|] a\n[|AI|]   \n\n[|Human|] c\n")
    assert parsed.turns == []
    assert parsed.error == "line 2: empty ai turn"


def test_it_reports_only_ai_turns():
    parsed = parse_transcript(sample("only_ai.txt"))
    assert parsed.turns == []
    assert parsed.error == "no human marker found (only AI turns)"


def test_it_reports_text_without_any_marker():
    parsed = parse_transcript("I'm sorry, I can't write a transcript about that.")
    assert parsed == ParsedTranscript(turns=[], error="no human marker found")


@pytest.mark.parametrize("raw", ["", "   \n\t\r\n", None])
def test_it_reports_empty_input(raw):
    assert parse_transcript(raw) == ParsedTranscript(turns=[], error="empty transcript")


def test_it_reports_a_lone_cut_off_human_turn():
    parsed = parse_transcript("[|Human|] What is the capital of")
    assert parsed.turns == []
    assert parsed.error.startswith("no complete turn")


def test_it_survives_garbage_bytes():
    raw = (DATA / "garbage.bin").read_bytes()
    from_bytes = parse_transcript(raw)
    from_text = parse_transcript(raw.decode("utf-8", errors="surrogateescape"))
    assert isinstance(from_bytes, ParsedTranscript) and isinstance(from_text, ParsedTranscript)
    assert from_bytes.turns == [] and from_bytes.error


def test_it_parses_a_one_megabyte_transcript():
    exchange = "[|Human|] Question number {i}: how does it work?\n[|AI|] " + "It works like this. " * 40 + "\n"
    raw = "".join(exchange.format(i=i) for i in range(1300)) + "[|Human|] cut"
    assert len(raw) > 1_000_000
    parsed = parse_transcript(raw)
    assert parsed.error == ""
    assert len(parsed.turns) == 2600
    assert parsed.turns[-2]["text"] == "Question number 1299: how does it work?"


def test_it_uses_custom_markers():
    raw = "<user> hi\n<bot> hello\n<user> bye"
    parsed = parse_transcript(raw, human_markers=("<user>",), ai_markers=("<bot>",), drop_trailing_human=False)
    assert texts(parsed) == ["hi", "hello", "bye"]


def test_it_does_not_take_a_word_that_starts_like_a_marker_for_one():
    parsed = parse_transcript("[|Human|] hi\n[|AI|] Some facts:\nAIs are programs.\nHumane societies exist.\n")
    assert texts(parsed) == ["hi", "Some facts:\nAIs are programs.\nHumane societies exist."]


def test_it_renders_turns_as_marker_lines():
    turns = [{"role": "human", "text": "Hi"}, {"role": "ai", "text": "Hello!\nHow can I help?"}]
    assert render_transcript(turns) == "[|Human|] Hi\n[|AI|] Hello!\nHow can I help?\n"
    assert render_transcript(turns, human_marker="User:", ai_marker="Bot:") == "User: Hi\nBot: Hello!\nHow can I help?\n"


_turn_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
    min_size=1, max_size=40,
).map(lambda s: " ".join(s.split())).filter(lambda s: s and s[0] not in "[HAU`~" and "\n" not in s)


@settings(max_examples=200, deadline=None)
@given(st.lists(_turn_text, min_size=1, max_size=8))
def test_it_round_trips_rendered_turns(lines):
    turns = [{"role": "human" if i % 2 == 0 else "ai", "text": text} for i, text in enumerate(lines)]
    parsed = parse_transcript(render_transcript(turns), drop_trailing_human=False)
    assert parsed.error == ""
    assert parsed.turns == turns


_messy = st.lists(st.one_of(
    st.sampled_from(["[|Human|]", "[|AI|]", "Human:", "AI:", "[Human]", "```", "~~~~", "    ", "\t", "\r\n", "\n",
                     "[|System|]", "[|", "|]", "`", "Assistant:", " "]),
    st.text(max_size=12),
), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(_messy, st.booleans())
def test_it_never_raises_and_always_returns_alternating_non_empty_turns(raw, drop_trailing_human):
    parsed = parse_transcript(raw, drop_trailing_human=drop_trailing_human)
    assert not parsed.error.startswith("parser failure")  # the safety net in parse_transcript never fires
    for index, turn in enumerate(parsed.turns):
        assert turn["role"] == ("human" if index % 2 == 0 else "ai")
        assert turn["text"] and turn["text"] == turn["text"].strip()
    if drop_trailing_human and parsed.turns:
        assert parsed.turns[-1]["role"] == "ai"
    assert parsed.turns or parsed.error
