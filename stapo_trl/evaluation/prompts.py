"""The text fed to the model for a benchmark prompt, rendered as TRL renders it in training."""

from __future__ import annotations

from collections.abc import Mapping


def format_prompt(prompt, tokenizer=None, chat_template_kwargs: Mapping | None = None) -> str:
    """The text fed to the model for a benchmark prompt, as in training.

    A conversational prompt (list of messages) goes through the tokenizer's chat template with the generation
    prompt added, as TRL's `GRPOTrainer` does. A tokenizer without a chat template (e.g. the character tokenizer of
    `stapo_trl.tiny`) or no tokenizer gives the plain text: the message contents joined by blank lines (the user
    content for the one-message prompts of `build_prompt`). A string is returned unchanged.
    """
    if isinstance(prompt, str):
        return prompt
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(prompt), tokenize=False, add_generation_prompt=True, **dict(chat_template_kwargs or {})
        )
    return "\n\n".join(_message_text(message) for message in prompt)


def _message_text(message: Mapping) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))
