"""Prompts: the chat template with its plain fallback, the end-of-turn string, preference pairs as text, and
each family's chat format (Llama 2, Llama 3, Qwen/ChatML, Gemma, Mistral, a base model) with its BOS rule."""

import hashlib
import json

import pytest
from conftest import make_tiny_tokenizer

from workbench.core.prompts import (DEFAULT_SYSTEM_PROMPT, EXAMPLE_QUESTION, chat_family, default_prepend_bos,
                                    end_of_turn, format_chat, has_chat_template, prompt_format, prompts_and_answers)
from workbench.engine.items import tokenize_completions
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


# --------------------------------------------------------------------------- each family's chat format
# Short Jinja templates written for these tests, each laid out as its family's public chat template.
LLAMA2 = (  # Llama-2-chat: the system prompt inside the first [INST] as <<SYS>>; BOS written by the template
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
    "{% else %}{% set sys = none %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}{% set c = m['content'] %}"
    "{% if loop.first and sys is not none %}{% set c = '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + c %}{% endif %}"
    "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + c.strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + c.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
LLAMA3 = (  # Llama 3 instruct: header ids around each role, <|eot_id|> ends every turn
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
CHATML = (  # Qwen2 (ChatML): a default system turn when none is given, no BOS
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
GEMMA = (  # Gemma instruct: user and model turns only, the system role is refused
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
MISTRAL = (  # Mistral-7B-Instruct v0.1: [INST] without <<SYS>>, user and assistant roles only
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

#: name: (template, specials, bos, eos, whether the tokenizer adds its BOS, family_hint, system_role,
#:        the prompt of ("Why?", "Be brief."))
FAMILIES = {
    "llama2": (LLAMA2, ["<s>", "</s>"], "<s>", "</s>", True, "llama2-inst", True,
               "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhy? [/INST]"),
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>", True, "llama3", True,
               "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "qwen": (CHATML, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", False, "chatml", True,
             "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"),
    "gemma": (GEMMA, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", True, "gemma",
              False, "<bos><start_of_turn>user\nBe brief.\n\nWhy?<end_of_turn>\n<start_of_turn>model\n"),
    "mistral": (MISTRAL, ["<s>", "</s>"], "<s>", "</s>", True, "mistral-inst", False,
                "<s>[INST] Be brief.\n\nWhy? [/INST]"),
    "base": (None, ["<s>", "</s>"], "<s>", "</s>", True, None, None, "Be brief.\n\nQuestion: Why?\nAnswer:"),
}
#: the string that ends the assistant's answer in each family's template (``</s>`` is the EOS of the Llama 2,
#: Mistral and base tokenizers, written by the template as ``eos_token``)
END_OF_TURN = {"llama2": "</s>", "llama3": "<|eot_id|>", "qwen": "<|im_end|>", "gemma": "<end_of_turn>",
               "mistral": "</s>", "base": "</s>"}


def family_tokenizer(name, directory):
    """A character-level tokenizer with the family's special tokens, BOS and chat template, saved to
    ``directory`` and read back (as TransformerLens re-reads it by path)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    template, specials, bos, eos, add_bos = FAMILIES[name][:5]
    vocab = {t: i for i, t in enumerate(["<unk>", *specials, *(chr(i) for i in range(32, 127)), "\n"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token="<unk>",
                                  pad_token=eos, add_bos_token=add_bos)
    tok.add_special_tokens({"additional_special_tokens": specials})
    if template is not None:
        tok.chat_template = template
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def model_with(tok, prepend_bos):
    """A one-block HookedTransformer around a copy of ``tok`` (TransformerLens gives a tokenizer without a
    BOS token its EOS as BOS) whose ``default_prepend_bos`` is ``prepend_bos``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=len(tok), n_ctx=256,
                                  act_fn="relu", default_prepend_bos=prepend_bos, model_name="tiny-family")
    return HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(tok.name_or_path), move_to_device=False)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    return request.param, family_tokenizer(request.param, tmp_path_factory.mktemp(request.param))


def test_each_family_formats_its_prompt(family):
    name, tok = family
    expected = FAMILIES[name][7]
    assert format_chat(tok, "Why?", "Be brief.") == expected
    assert has_chat_template(tok) is (name != "base")
    if name == "qwen":  # no system prompt: the template's own
        assert format_chat(tok, "Why?").startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    if name in ("gemma", "mistral"):  # the system role is refused: the system prompt opens the question
        assert format_chat(tok, "Why?") == expected.replace("Be brief.\n\n", "")


def test_each_family_closes_the_answer_with_its_end_of_turn(family):
    """The template's own rendering of an answered turn puts ``end_of_turn`` right after the answer."""
    name, tok = family
    eot = end_of_turn(tok)
    assert eot == END_OF_TURN[name]
    if name == "base":
        assert eot == tok.eos_token
        return
    prompt = format_chat(tok, "Why?")
    full = tok.apply_chat_template([{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "So."}],
                                   tokenize=False)
    assert full.startswith(prompt)
    answer = full[len(prompt):].strip()
    assert answer.startswith("So.") and answer[len("So."):].lstrip().startswith(eot)


def test_prompt_format_names_each_family(family):
    name, tok = family
    template, *_, hint, system_role, expected = FAMILIES[name]
    info = prompt_format(tok, "Be brief.")
    assert info == {"format": "plain" if template is None else "chat_template",
                    "template_sha256": info["template_sha256"], "family_hint": hint, "system_role": system_role,
                    "system_prompt": "Be brief.", "end_of_turn": END_OF_TURN[name],
                    "prepend_bos": template is None, "example": format_chat(tok, EXAMPLE_QUESTION, "Be brief.")}
    assert chat_family(tok) == hint
    if template is None:
        assert info["template_sha256"] is None
    else:
        assert info["template_sha256"] == hashlib.sha256(template.encode()).hexdigest()[:16]
    # without a system prompt: the probe still says whether the template takes one
    assert prompt_format(tok, None)["system_role"] == system_role
    assert prompt_format(tok, None)["example"] == format_chat(tok, EXAMPLE_QUESTION)
    json.dumps(info)  # JSON-ready


def test_one_bos_per_prompt_under_the_loaders_rule(family):
    """The loaders' rule (``default_prepend_bos``: no chat template and a BOS token) gives exactly one BOS
    (none for ChatML, which has no BOS) both where TransformerLens tokenizes (``to_tokens``) and where the
    engine does (``tokenize_completions``); prepending one to a template that writes its own gives two."""
    name, tok = family
    rule = not has_chat_template(tok) and tok.bos_token_id is not None
    assert default_prepend_bos(tok) is rule is (name == "base")
    model = model_with(tok, rule)
    assert prompt_format(model)["prepend_bos"] is rule
    prompt = format_chat(model, "Why?", "Be brief.")
    tokens = model.to_tokens(prompt)[0].tolist()
    batch = tokenize_completions(model, [prompt], ["So." + end_of_turn(model)])
    engine = batch.tokens[0, : int(batch.prompt_lengths[0])].tolist()
    plain = tok(prompt, add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is None:
        assert tokens == engine == plain
        return
    bos = tok.bos_token_id
    assert tokens == engine == ([bos] if rule else []) + plain
    assert tokens[0] == bos and tokens.count(bos) == 1
    if not rule:  # the rule matters: TransformerLens would add a second BOS before the template's
        assert model_with(tok, True).to_tokens(prompt)[0].tolist()[:2] == [bos, bos]


def test_prompt_format_of_a_model_reads_its_config(tiny_model):
    info = prompt_format(tiny_model)
    assert info["prepend_bos"] is tiny_model.cfg.default_prepend_bos is False
    assert (info["format"], info["family_hint"], info["system_role"], info["end_of_turn"]) == (
        "chat_template", "chatml", True, "<|im_end|>")
    assert info["system_prompt"] == DEFAULT_SYSTEM_PROMPT
    assert info["example"] == format_chat(tiny_model, EXAMPLE_QUESTION, DEFAULT_SYSTEM_PROMPT)
