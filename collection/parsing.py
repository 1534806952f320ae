"""Turn a self-chat transcript (an LLM's raw text) into alternating human/AI turns, Baize style.

What a user gets: the raw output of a generation call, or a transcript from an imported corpus, becomes a list of
{"role": "human"|"ai", "text": str} turns, starting with the human; when the text is broken, the good prefix is
kept and `error` says where and why. It never raises, whatever the model wrote.

Baize semantics:
  - text before the first human marker is dropped (the prompt's echo, "The conversation between ..." headers);
  - the last human turn is dropped when `drop_trailing_human` (generated output stops mid-question); an EMPTY
    trailing human turn (the published Baize data ends "...\\n[|Human|] ") is always dropped;
  - parsing stops at the first malformed turn (two human or two AI turns in a row, an empty turn, an unknown
    "[|Name|]" marker), keeping the turns before it.

A marker counts only at the start of a line (after up to three spaces of stray indentation, or more when the line
continues a paragraph) and outside fenced (``` or ~~~) and indented code blocks, so a model quoting "[|AI|]" in
code, inline code, or mid-sentence does not split a turn. No Django imports: the importer, the generation driver
and the tests use it directly.
"""
import re
from dataclasses import dataclass, field

HUMAN = "human"
AI = "ai"

DEFAULT_HUMAN_MARKERS = ("[|Human|]", "[Human]", "Human:", "[|User|]")
DEFAULT_AI_MARKERS = ("[|AI|]", "[AI]", "AI:", "[|Assistant|]", "[Assistant]", "Assistant:")

# "[|Anything|]" at the start of a line that is not one of ours: a role we do not know, so the turn structure
# can no longer be trusted.
_UNKNOWN_MARKER = re.compile(r"\[\|[^|\]\n]{1,40}\|\]")
_FENCE = re.compile(r"(`{3,}|~{3,})(.*)")
_CODE_INDENT = 4


@dataclass(frozen=True)
class ParsedTranscript:
    turns: list = field(default_factory=list)  # [{"role": "human"|"ai", "text": str}], alternating, human first
    error: str = ""  # "" when parsed cleanly; else why, naming the line


def _marker_pattern(markers):
    """One regex for a set of markers: longest first, an optional colon after a bracketed one ("[Human]:"),
    and a word boundary after a marker that ends in a letter (so "Humane" is not "Human")."""
    parts = []
    for marker in sorted({m for m in markers if m}, key=len, reverse=True):
        part = re.escape(marker)
        if not marker.endswith(":"):
            part += ":?"
        if marker[-1].isalnum():
            part += r"(?![\w])"
        parts.append(part)
    if not parts:
        return None
    return re.compile("(?:" + "|".join(parts) + ")")


def _indent_width(line):
    width = 0
    for char in line:
        if char == " ":
            width += 1
        elif char == "\t":
            width += _CODE_INDENT - width % _CODE_INDENT
        else:
            break
    return width


def _as_text(raw):
    if raw is None:
        return ""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", errors="replace")
    if not isinstance(raw, str):
        return str(raw)
    return raw


def _marker_lines(lines, human_re, ai_re):
    """Yield (line_index, role or "unknown:<marker>", text after the marker) for each line that opens a turn."""
    fence = None  # (char, length) of the open fenced code block
    in_indented_code = False
    previous_blank = True
    for index, line in enumerate(lines):
        stripped = line.lstrip(" \t")
        indent = _indent_width(line)
        blank = not stripped.strip()
        if fence is not None:
            match = _FENCE.match(stripped)
            # A fence closes on the same character, at least as long, with nothing after it (CommonMark).
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= fence[1] and not match.group(2).strip():
                fence = None
            previous_blank = False
            continue
        if blank:
            previous_blank = True
            continue
        if indent >= _CODE_INDENT and (previous_blank or in_indented_code):
            # An indented code block starts only after a blank line; it cannot interrupt a paragraph.
            in_indented_code = True
            previous_blank = False
            continue
        in_indented_code = False
        previous_blank = False
        match = _FENCE.match(stripped)
        if match and not (match.group(1)[0] == "`" and "`" in match.group(2)):
            fence = (match.group(1)[0], len(match.group(1)))
            continue
        for role, pattern in ((HUMAN, human_re), (AI, ai_re)):
            if pattern is None:
                continue
            found = pattern.match(stripped)
            if found:
                yield index, role, stripped[found.end():]
                break
        else:
            unknown = _UNKNOWN_MARKER.match(stripped)
            if unknown:
                yield index, "unknown:" + unknown.group(0), ""


def parse_transcript(raw, *, human_markers=DEFAULT_HUMAN_MARKERS, ai_markers=DEFAULT_AI_MARKERS,
                     drop_trailing_human=True):
    """Parse a transcript into turns (see the module docstring). Never raises."""
    try:
        return _parse(_as_text(raw), human_markers, ai_markers, drop_trailing_human)
    except Exception as exc:  # noqa: BLE001 - a run must never crash on what a model wrote
        return ParsedTranscript(turns=[], error=f"parser failure: {type(exc).__name__}")


def _parse(text, human_markers, ai_markers, drop_trailing_human):
    if not text.strip():
        return ParsedTranscript(turns=[], error="empty transcript")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    human_re = _marker_pattern(human_markers or ())
    ai_re = _marker_pattern(ai_markers or ())

    # Each turn: [role, first line index, text on the marker line]; the body runs to the next marker line.
    openings = list(_marker_lines(lines, human_re, ai_re))
    first_human = next((i for i, opening in enumerate(openings) if opening[1] == HUMAN), None)
    if first_human is None:
        if any(opening[1] == AI for opening in openings):
            return ParsedTranscript(turns=[], error="no human marker found (only AI turns)")
        return ParsedTranscript(turns=[], error="no human marker found")
    openings = openings[first_human:]

    turns = []
    error = ""
    for position, (line_index, role, head) in enumerate(openings):
        end = openings[position + 1][0] if position + 1 < len(openings) else len(lines)
        body = "\n".join([head] + lines[line_index + 1:end]).strip()
        is_last = position + 1 == len(openings)
        where = f"line {line_index + 1}"
        if role.startswith("unknown:"):
            error = f"{where}: unknown marker {role[len('unknown:'):]}"
            break
        expected = HUMAN if len(turns) % 2 == 0 else AI
        if role != expected:
            error = f"{where}: two {role} turns in a row"
            break
        if not body:
            if role == HUMAN and is_last:
                break  # the published Baize data ends with an empty "[|Human|] ": the end, not an error
            error = f"{where}: empty {role} turn"
            break
        turns.append({"role": role, "text": body})

    if turns and turns[-1]["role"] == HUMAN and drop_trailing_human:
        # Generated output stops mid-question (max_tokens, or the model stops itself): that turn has no answer.
        turns.pop()
    if not turns and not error:
        error = "no complete turn (only a human turn without an answer)"
    return ParsedTranscript(turns=turns, error=error)


def render_transcript(turns, *, human_marker="[|Human|]", ai_marker="[|AI|]"):
    """The conversation so far as marker lines, one turn each, e.g. "[|Human|] Hi\\n[|AI|] Hello!\\n"."""
    markers = {HUMAN: human_marker, AI: ai_marker}
    return "".join(f"{markers.get(turn['role'], ai_marker)} {turn['text']}\n" for turn in turns)
