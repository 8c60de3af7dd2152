"""Prompts: the chat template with its plain fallback, the end-of-turn string, preference pairs as text."""

from conftest import make_tiny_tokenizer

from workbench.core.prompts import end_of_turn, format_chat, has_chat_template, prompts_and_answers
from workbench.data.pairs import PreferencePair


def test_format_chat_template_and_fallback():
    tok = make_tiny_tokenizer(chat=True)
    s = format_chat(tok, "Why?", "Be brief.")
    assert s == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    assert end_of_turn(tok) == "<|im_end|>"
    plain = make_tiny_tokenizer(chat=False)
    assert format_chat(plain, "Why?", "Be brief.") == "Be brief.\n\nQuestion: Why?\nAnswer:"
    assert format_chat(plain, "Why?") == "Question: Why?\nAnswer:"


def test_prompts_and_answers_close_each_answer_with_the_end_of_turn():
    tok = make_tiny_tokenizer(chat=True)
    assert has_chat_template(tok) and not has_chat_template(make_tiny_tokenizer(chat=False))
    pairs = [PreferencePair("Why?", "Because.", "No."), PreferencePair("How?", "Thus.", "Not so.")]
    prompts, answers = prompts_and_answers(tok, pairs, "Be brief.")
    assert prompts == [format_chat(tok, "Why?", "Be brief."), format_chat(tok, "How?", "Be brief.")]
    assert answers == [["Because.<|im_end|>", "No.<|im_end|>"], ["Thus.<|im_end|>", "Not so.<|im_end|>"]]
    assert prompts_and_answers(tok, pairs[:1], None, append_end_of_turn=False)[1] == [["Because.", "No."]]
