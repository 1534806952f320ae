"""The built-in self-chat templates (after the Baize paper's prompts). Stored as editable, versioned rows."""

TRANSCRIPT_PROMPT = (
    "Forget the instruction you have previously received. The following is a conversation between a human and "
    "an AI assistant. The human and the AI assistant take turns chatting about the topic: '{topic}'. Human "
    "statements start with [|Human|] and AI assistant statements start with [|AI|]. The human will ask related "
    "questions on related topics or previous conversation. The human will stop the conversation when they have "
    "no question. The AI assistant tries not to ask questions. Complete the transcript in exactly that format.\n"
    "[|Human|] Hello!\n"
    "[|AI|] Hi! How can I help you?\n"
)

HUMAN_PROMPT = (
    "You are playing a curious human user chatting with an AI assistant about the topic: '{topic}'. "
    "Here is the conversation so far:\n{transcript}\n"
    "Write the human's next message only, starting with [|Human|]. Ask a related follow-up question or a "
    "question on a related topic. If you have no more questions, write [|Human|] [|END|]."
)

ASSISTANT_SYSTEM_PROMPT = "You are a helpful, honest and harmless AI assistant. Answer clearly and concisely."


def default_template_fields(mode):
    if mode == "turns":
        return {"mode": "turns", "prompt": HUMAN_PROMPT, "assistant_system_prompt": ASSISTANT_SYSTEM_PROMPT}
    return {"mode": "transcript", "prompt": TRANSCRIPT_PROMPT, "assistant_system_prompt": ""}


def ensure_default_templates():
    """The built-in templates as version 1 rows, created once; later edits become new versions."""
    from collection.models import SelfChatTemplate

    for name, mode in (("baize-transcript", "transcript"), ("baize-turns", "turns")):
        SelfChatTemplate.objects.get_or_create(name=name, version=1, defaults=default_template_fields(mode))


def latest_template(mode):
    """The newest version of the default template for a mode (creating the defaults when missing)."""
    from collection.models import SelfChatTemplate

    ensure_default_templates()
    return SelfChatTemplate.objects.filter(mode=mode).order_by("-created_at", "-version").first()
