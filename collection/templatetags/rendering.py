"""`{{ text|markdown }}`: untrusted Markdown rendered through collection.rendering's sanitizer."""
from django import template

from collection.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text):
    return render_markdown(text)
