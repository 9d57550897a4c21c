"""A user's Containerfile, made buildable here: every FROM must name a local template. Pure.

Nothing can be pulled on these machines, so a `FROM` may name only a template
the user can see (a built-in such as `base`, or one of their own by name or id),
an earlier stage of the same file, or `scratch`. Each template is replaced by its
image, so the build never looks for it in a registry:

    FROM base AS build        ->  FROM localhost/scalebox/base:latest AS build
    FROM build                ->  FROM build                  (an earlier stage)
    FROM ubuntu:22.04         ->  BadRequest: not a template here

The other instructions are left to the builder, which reports their errors in
the build log.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.errors import ApiError, BadRequest
from controlplane.templates import Template

MAX_CONTAINERFILE = 256 * 1024
_FROM = re.compile(r"^(\s*)(from)(\s+)(.*?)\s*$", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Rewritten:
    text: str
    # The template the final stage starts from (its settings are the new one's
    # defaults); None when it starts from scratch or from an earlier stage.
    parent: Template | None


def rewrite(text: object, find_template: Callable[[str], Template]) -> Rewritten:
    """`text` with each FROM naming a template's image; `find_template` raises ApiError for
    a name that is not one (NotFound, or Conflict when not ready)."""
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("dockerfile must be the text of a Containerfile, starting with FROM", code="invalid_field")
    if len(text) > MAX_CONTAINERFILE or "\x00" in text:
        raise BadRequest(f"dockerfile must be at most {MAX_CONTAINERFILE} characters, no NUL", code="invalid_field")
    stages: set[str] = set()
    parent: Template | None = None
    seen_from = False
    out: list[str] = []
    continued = False
    for number, line in enumerate(text.splitlines(), 1):
        match = None if continued else _FROM.match(line)
        continued = line.rstrip().endswith("\\")
        if match is None:
            out.append(line)
            continue
        if continued:
            raise BadRequest(f"line {number}: write each FROM on one line", code="invalid_containerfile")
        indent, keyword, space, rest = match.groups()
        words = rest.split()
        flags = [w for w in words if w.startswith("--")]
        args = [w for w in words if not w.startswith("--")]
        if len(args) not in (1, 3) or (len(args) == 3 and args[1].lower() != "as"):
            raise BadRequest(
                f"line {number}: FROM takes a template and optionally AS <name>", code="invalid_containerfile"
            )
        ref = args[0]
        if "$" in ref:
            raise BadRequest(
                f"line {number}: FROM cannot use a variable here; name a template", code="invalid_containerfile"
            )
        seen_from = True
        if ref.lower() in stages or ref == "scratch":
            image, parent = ref, None
        else:
            try:
                template = find_template(ref)
            except ApiError as exc:
                raise BadRequest(
                    f"line {number}: FROM {ref[:128]}: {exc.message}. Nothing can be pulled here: FROM must name "
                    "a built-in template (base, code-interpreter) or one of your ready templates",
                    code="invalid_base",
                ) from None
            image, parent = template.image, template
        if len(args) == 3:
            stages.add(args[2].lower())
        out.append(indent + " ".join([keyword, *flags, image, *args[1:]]) if space else line)
    if not seen_from:
        raise BadRequest("the Containerfile has no FROM; start it with e.g. FROM base", code="invalid_containerfile")
    return Rewritten(text="\n".join(out) + "\n", parent=parent)
