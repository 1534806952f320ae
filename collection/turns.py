"""A dialogue's turns: a list of {"role": "human"|"ai", "text": str}, alternating, starting with the human."""
HUMAN = "human"
AI = "ai"
ROLES = (HUMAN, AI)


class TurnsError(ValueError):
    """Names the turn (0-based index) and field that is wrong."""


def validate_turns(turns, *, require_alternation=True):
    """Return the turns as clean dicts, or raise TurnsError naming the first bad turn."""
    if not isinstance(turns, list):
        raise TurnsError("turns must be a list of {role, text} objects")
    clean = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise TurnsError(f"turn {index}: must be an object with 'role' and 'text'")
        role, text = turn.get("role"), turn.get("text")
        if role not in ROLES:
            raise TurnsError(f"turn {index}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(text, str):
            raise TurnsError(f"turn {index}: text must be a string")
        if require_alternation:
            expected = ROLES[index % 2]
            if role != expected:
                raise TurnsError(f"turn {index}: expected a {expected} turn (turns alternate, the human first)")
        clean.append({"role": role, "text": text})
    return clean
