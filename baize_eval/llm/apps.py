from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "baize_eval.llm"
    label = "llm"
    verbose_name = "LLM endpoints"
