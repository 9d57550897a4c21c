"""The languages a context can run, by the names clients use for them, and how each kernel starts (pure)."""

from __future__ import annotations

import os
from typing import NamedTuple

PYTHON = "python"
BASH = "bash"
JAVASCRIPT = "javascript"

KERNELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")

# What clients send: the SDKs' create_code_context defaults to "python3", run_code to "python".
ALIASES = {
    "": PYTHON,
    "python": PYTHON,
    "python3": PYTHON,
    "py": PYTHON,
    "bash": BASH,
    "sh": BASH,
    "shell": BASH,
    "javascript": JAVASCRIPT,
    "js": JAVASCRIPT,
    "node": JAVASCRIPT,
    "nodejs": JAVASCRIPT,
}


class UnknownLanguage(ValueError):
    pass


class Language(NamedTuple):
    name: str
    program: str  # looked up on the context's PATH; a template without it cannot run the language
    argv: tuple[str, ...]


LANGUAGES = {
    PYTHON: Language(PYTHON, "python3", ("python3", os.path.join(KERNELS_DIR, "python_kernel.py"))),
    BASH: Language(BASH, "bash", ("bash", "--noprofile", "--norc", os.path.join(KERNELS_DIR, "bash_kernel.sh"))),
    JAVASCRIPT: Language(JAVASCRIPT, "node", ("node", os.path.join(KERNELS_DIR, "node_kernel.js"))),
}


def resolve(name: str) -> Language:
    """The language ``name`` stands for; UnknownLanguage, naming the choices, otherwise."""
    key = ALIASES.get(name.strip().lower())
    if key is None:
        choices = ", ".join(sorted(LANGUAGES))
        raise UnknownLanguage(f"language {name[:40]!r} is not supported: use one of {choices}")
    return LANGUAGES[key]
