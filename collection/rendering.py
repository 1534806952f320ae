"""Markdown for untrusted text (LLM output, uploads): what a page shows of a dialogue is formatted but inert.

markdown-it-py parses CommonMark (plus tables and strikethrough) with raw HTML turned off, so a `<script>` in the
text comes out as visible text; nh3 (the ammonia sanitizer) then keeps only the tags and attributes below, which
removes anything a future parser option might let through (event handlers, javascript: links, iframes). Images
stay literal text: an image in generated text would make every reviewer's browser fetch an arbitrary URL.

Templates: `{% load rendering %}{{ text|markdown }}`.
"""
import nh3
from django.utils.safestring import mark_safe
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},  # language-xyz from fenced code blocks
    "ol": {"start"},
    "th": {"style"},  # table column alignment
    "td": {"style"},
}
URL_SCHEMES = {"http", "https", "mailto"}

_parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
).disable("image")


def render_markdown(text):
    """Sanitized HTML for untrusted Markdown text, safe to insert into a page as is."""
    if not text:
        return mark_safe("")
    html = _parser.render(str(text))
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
    )
    return mark_safe(clean)  # noqa: S308 - the output of nh3 with the allow-lists above
