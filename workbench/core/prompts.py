"""Prompts: the chat layout of a question, the end-of-turn string, and BiPO's system prompt.

Every part of the workbench that turns a preference pair into text goes through these helpers, so
training, evaluation, sweeps and the notebooks score the same strings: the chat template around the
question (with the system prompt) ending where the assistant's answer begins, and each answer closed
by the model's end-of-turn string (BiPO's protocol, Cao et al. 2024, arXiv 2406.00045).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.core.backend import Model

#: BiPO's official system prompt (also CAA's default here).
DEFAULT_SYSTEM_PROMPT = "You are a helpful, honest and concise assistant."


def has_chat_template(model_or_tokenizer: Any) -> bool:
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    return bool(getattr(tok, "chat_template", None))


def format_chat(model_or_tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """The prompt string for ``question`` ending where the assistant's answer begins.

    With a chat template (SmolLM2, Llama-2-chat, Gemma-it ...) it is applied with
    ``add_generation_prompt=True``. Without one the plain fallback is
    ``"{system}\\n\\nQuestion: {question}\\nAnswer:"``.

    Example:
        >>> format_chat(model, "Is the sky blue?", "You are concise.")
        '<|im_start|>system\\nYou are concise.<|im_end|>\\n<|im_start|>user\\nIs the sky blue?<|im_end|>\\n<|im_start|>assistant\\n'
    """
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if has_chat_template(tok):
        messages = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": question})
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates that reject a system role (Gemma): fold it into the question
            if system_prompt is None:
                raise
            messages = [{"role": "user", "content": f"{system_prompt}\n\n{question}"}]
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{prefix}Question: {question}\nAnswer:"


def end_of_turn(model_or_tokenizer: Any) -> str:
    """The string that ends an assistant turn (``<|im_end|>`` for SmolLM2); ``""`` if unknown."""
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if has_chat_template(tok):
        template = str(tok.chat_template)
        for marker in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "</s>"):
            if marker in template:
                return marker
    return getattr(tok, "eos_token", None) or ""


def prompts_and_answers(model: Model, pairs: Sequence[Any], system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, *,
                        append_end_of_turn: bool = True) -> tuple[list[str], list[list[str]]]:
    """Chat prompts and ``[matching, not_matching]`` answers of preference pairs.

    Each answer is closed by ``end_of_turn(model)`` unless ``append_end_of_turn`` is False.
    """
    eot = end_of_turn(model) if append_end_of_turn else ""
    prompts = [format_chat(model, p.question, system_prompt) for p in pairs]
    return prompts, [[p.matching + eot, p.not_matching + eot] for p in pairs]


__all__ = ["DEFAULT_SYSTEM_PROMPT", "end_of_turn", "format_chat", "has_chat_template", "prompts_and_answers"]
