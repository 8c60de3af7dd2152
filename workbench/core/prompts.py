"""Prompts: the chat layout of a question, the end-of-turn string, and BiPO's system prompt.

Every part of the workbench that turns a preference pair into text goes through these helpers, so
training, evaluation, sweeps and the notebooks score the same strings: the chat template around the
question (with the system prompt) ending where the assistant's answer begins, and each answer closed
by the model's end-of-turn string (BiPO's protocol, Cao et al. 2024, arXiv 2406.00045).

``prompt_format`` describes the layout a model gets (its chat template and family, or the plain prompt of a
base model, the end-of-turn string and the BOS rule), so that every result can say which one a run used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from workbench.core.backend import Model

#: BiPO's official system prompt (also CAA's default here).
DEFAULT_SYSTEM_PROMPT = "You are a helpful, honest and concise assistant."
#: the question of ``prompt_format``'s example prompt
EXAMPLE_QUESTION = "Is the sky blue?"
#: chat families by a marker of their template; the first match wins (Llama 2's ``<<SYS>>`` before a bare ``[INST]``)
_FAMILY_MARKERS = (("<start_of_turn>", "gemma"), ("<|start_header_id|>", "llama3"), ("<|im_start|>", "chatml"),
                   ("<<SYS>>", "llama2-inst"), ("[INST]", "mistral-inst"))


def has_chat_template(model_or_tokenizer: Any) -> bool:
    return bool(getattr(_tokenizer(model_or_tokenizer), "chat_template", None))


def _tokenizer(model_or_tokenizer: Any) -> Any:
    return getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)


def _apply_chat(tok: Any, question: str, system_prompt: str | None) -> tuple[str, bool]:
    """The chat prompt, and whether the system prompt went in as a system message (False: folded, or none)."""
    messages = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), system_prompt is not None
    except Exception:  # templates that reject a system role (Gemma): fold it into the question
        if system_prompt is None:
            raise
        messages = [{"role": "user", "content": f"{system_prompt}\n\n{question}"}]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False


def format_chat(model_or_tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """The prompt string for ``question`` ending where the assistant's answer begins.

    With a chat template (SmolLM2, Llama-2-chat, Gemma-it ...) it is applied with
    ``add_generation_prompt=True``; a template that rejects the system role (Gemma) gets the system
    prompt folded into the question (``"{system}\\n\\n{question}"``). Without one the plain fallback is
    ``"{system}\\n\\nQuestion: {question}\\nAnswer:"``.

    Example:
        >>> format_chat(model, "Is the sky blue?", "You are concise.")
        '<|im_start|>system\\nYou are concise.<|im_end|>\\n<|im_start|>user\\nIs the sky blue?<|im_end|>\\n<|im_start|>assistant\\n'
    """
    tok = _tokenizer(model_or_tokenizer)
    if has_chat_template(tok):
        return _apply_chat(tok, question, system_prompt)[0]
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{prefix}Question: {question}\nAnswer:"


def end_of_turn(model_or_tokenizer: Any) -> str:
    """The string that ends an assistant turn (``<|im_end|>`` for SmolLM2); ``""`` if unknown."""
    tok = _tokenizer(model_or_tokenizer)
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


def default_prepend_bos(model_or_tokenizer: Any) -> bool:
    """The loaders' BOS rule: prepend the BOS token to a prompt only when there is no chat template (the
    templates of Llama 2 and 3, Gemma and Mistral write the BOS text themselves, ChatML has none) and the
    tokenizer has a BOS token. A model's ``cfg.default_prepend_bos`` is this value for its tokenizer."""
    tok = _tokenizer(model_or_tokenizer)
    return not has_chat_template(tok) and getattr(tok, "bos_token_id", None) is not None


def chat_family(model_or_tokenizer: Any) -> str | None:
    """The chat layout a template writes, from its markers: ``"llama2-inst"`` (``[INST] <<SYS>>``),
    ``"llama3"`` (header ids), ``"chatml"`` (``<|im_start|>``: Qwen, SmolLM2), ``"gemma"``
    (``<start_of_turn>``), ``"mistral-inst"`` (``[INST]`` without ``<<SYS>>``); None without a template
    or for another layout."""
    template = _template_text(_tokenizer(model_or_tokenizer))
    return next((family for marker, family in _FAMILY_MARKERS if marker in template), None)


def _template_text(tok: Any) -> str:
    template = getattr(tok, "chat_template", None) or ""
    return template if isinstance(template, str) else json.dumps(template, sort_keys=True)  # named templates


def prompt_format(model_or_tokenizer: Any, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> dict[str, Any]:
    """How prompts are laid out for a model: what a result records of the chat format a run used.

    Args:
        model_or_tokenizer: a model (its ``tokenizer`` and ``cfg.default_prepend_bos``) or a tokenizer.
        system_prompt: the run's system prompt (None: none).

    Returns:
        ``{"format": "chat_template" or "plain", "template_sha256": first 16 hex digits of the template's
        SHA-256 (None: plain), "family_hint": chat_family(...), "system_role": whether the template took the
        system prompt as a system message (False: folded into the question, as Gemma's; None: plain),
        "system_prompt", "end_of_turn": end_of_turn(...), "prepend_bos": the model's
        ``cfg.default_prepend_bos`` (for a tokenizer: default_prepend_bos(...)), "example": the prompt of
        EXAMPLE_QUESTION}``, JSON-ready.

    Example:
        >>> prompt_format(model, "You are concise.")  # SmolLM2-135M-Instruct
        {'format': 'chat_template', 'template_sha256': '...', 'family_hint': 'chatml', 'system_role': True,
         'system_prompt': 'You are concise.', 'end_of_turn': '<|im_end|>', 'prepend_bos': False,
         'example': '<|im_start|>system\\nYou are concise.<|im_end|>\\n<|im_start|>user\\nIs the sky blue?...'}
    """
    tok = _tokenizer(model_or_tokenizer)
    cfg = getattr(model_or_tokenizer, "cfg", None)
    bos = default_prepend_bos(tok) if cfg is None else bool(cfg.default_prepend_bos)
    chat = has_chat_template(tok)
    example, system_role = format_chat(tok, EXAMPLE_QUESTION, system_prompt), None
    if chat:  # whether the template takes a system message, probed with BiPO's when the run has none
        probe = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        text, taken = _apply_chat(tok, EXAMPLE_QUESTION, probe)
        system_role = taken and probe in text  # not folded into the question, not dropped
    return {"format": "chat_template" if chat else "plain",
            "template_sha256": hashlib.sha256(_template_text(tok).encode()).hexdigest()[:16] if chat else None,
            "family_hint": chat_family(tok), "system_role": system_role, "system_prompt": system_prompt,
            "end_of_turn": end_of_turn(tok), "prepend_bos": bos, "example": example}


__all__ = ["DEFAULT_SYSTEM_PROMPT", "EXAMPLE_QUESTION", "chat_family", "default_prepend_bos", "end_of_turn",
           "format_chat", "has_chat_template", "prompt_format", "prompts_and_answers"]
