"""Reading answers out of text, in pure Python and linear time: the completion's text, its last boxed answer, and the
gold answer as LaTeX; the input bounds that reject pathological answers before any parsing.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

logger = logging.getLogger(__name__)


#: Boxed answers longer than this are scored wrong without parsing (status ``"too_complex"``).
MAX_ANSWER_CHARS: int = 1000


#: Boxed answers nesting braces deeper than this are scored wrong without parsing (``"too_complex"``).
#: Real answers stay far below it; bare nested braces make math-verify's parser exponential.
MAX_BRACE_DEPTH: int = 20


#: Gold answers longer than this are treated as unparseable.
MAX_GOLD_CHARS: int = 2000


_BOX_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


# Tokens that matter for brace matching: a box opener, an escaped brace (literal, ignored), a brace.
_BRACE_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if isinstance(content, (list, tuple)):
        return "".join(_content_text(part) for part in content)
    return ""


def completion_text(completion: Any) -> str:
    """Return the text of a TRL completion.

    Args:
        completion: A plain string (standard format), a list of chat messages (conversational format,
            e.g. ``[{"role": "assistant", "content": "..."}]``) or a single message dict. The text of the
            last ``assistant`` message is used (the last message if none has that role); its content
            may be a string or a list of parts such as ``{"type": "text", "text": "..."}``.

    Returns:
        The text, or ``""`` for anything else (``None``, numbers, unknown structures). Never raises.
    """
    try:
        if isinstance(completion, str):
            return completion
        if isinstance(completion, dict):
            return _content_text(completion.get("content"))
        if isinstance(completion, (list, tuple)):
            messages = [m for m in completion if isinstance(m, dict)]
            if not messages:
                return "".join(m for m in completion if isinstance(m, str))
            assistant = [m for m in messages if m.get("role") == "assistant"]
            return _content_text((assistant or messages)[-1].get("content"))
    except Exception:  # pragma: no cover - defensive: odd mappings with failing .get()
        logger.debug("Could not read completion text", exc_info=True)
    return ""


def extract_boxed_answer(text: str) -> str | None:
    """Return the content of the last complete ``\\boxed{...}`` in ``text``.

    ``\\boxed {...}`` (space before the brace) and ``\\fbox{...}`` count as boxes too. Braces are matched
    with nesting (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); escaped braces ``\\{``/``\\}`` are
    literal characters. "Last" means the box that starts last among the boxes that are closed, so for
    nested boxes the inner one wins and an unclosed trailing ``\\boxed{`` (a truncated completion) is
    skipped in favour of the last closed one. Runs in linear time in the length of ``text``.

    Args:
        text: Completion text.

    Returns:
        The box content with surrounding whitespace stripped (possibly ``""`` for ``\\boxed{}``), or
        ``None`` when there is no complete box or ``text`` is not a string.
    """
    if not isinstance(text, str):
        return None
    first = _BOX_OPEN_RE.search(text)
    if first is None:
        return None
    # Stack of open braces: (box_start, content_start) for a box opener, None for a plain brace.
    stack: list[tuple[int, int] | None] = []
    best: tuple[int, int, int] | None = None  # (box_start, content_start, content_end)
    for match in _BRACE_TOKEN_RE.finditer(text, first.start()):
        token = match.group()
        if token == "}":
            if stack:
                opened = stack.pop()
                if opened is not None and (best is None or opened[0] > best[0]):
                    best = (opened[0], opened[1], match.start())
        elif token == "{":
            stack.append(None)
        elif len(token) > 2:  # a box opener
            stack.append((match.start(), match.end()))
        # else: an escaped brace (\{ or \}), literal text
    if best is None:
        return None
    return text[best[1] : best[2]].strip()


def max_brace_depth(text: str) -> int:
    depth = deepest = 0
    for match in _BRACE_TOKEN_RE.finditer(text):
        token = match.group()
        if token == "}":
            depth = max(depth - 1, 0)
        elif token == "{" or len(token) > 2:  # a plain brace or a box opener (escaped braces: len 2)
            depth += 1
            deepest = max(deepest, depth)
    return deepest


_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def gold_to_latex(gold: Any) -> str | None:
    """Normalise a gold answer into ``\\boxed{...}`` LaTeX for math-verify; ``None`` when unusable."""
    if gold is None or isinstance(gold, bool):
        return None
    if isinstance(gold, float):
        if not math.isfinite(gold):
            return None
        if gold.is_integer():
            gold = int(gold)
    if isinstance(gold, (list, tuple)):
        gold = ", ".join(str(g) for g in gold)
    text = str(gold).strip()
    for left, right in _MATH_DELIMITERS:
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            text = text[len(left) : -len(right)].strip()
            break
    if _BOX_OPEN_RE.search(text):
        inner = extract_boxed_answer(text)
        if inner is not None:
            text = inner
    if not text or len(text) > MAX_GOLD_CHARS:
        return None
    return "\\boxed{" + text + "}"
