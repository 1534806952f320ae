#!/usr/bin/env python
"""Django's command-line entry point for baize-eval."""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baize_eval.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
