import re

from openai_server import OpenAIServer
from sftmix.config import SourceConfig
from sftmix.data.clean import clean
from sftmix.data.generated import generate_code, generate_math
from sftmix.data.records import Conversation
from sftmix.data.sources import load_pool
from sftmix.data.tag import (
    LLMTagger,
    RuleTagger,
    abilities_from_open_tags,
    apply_tags,
    filter_tags,
    parse_instag_reply,
)


def conv(*turns, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return Conversation(msgs, "s", "general")


def raw(*pairs):
    return Conversation([{"role": r, "content": c} for r, c in pairs], "s", "general")


def test_cleaning_rules_are_counted():
    convs = [
        conv("q", "a"),
        conv("q", "a"),  # duplicate
        raw(("assistant", "hello"), ("user", "q2"), ("assistant", "a2")),  # leading assistant
        raw(("user", "q"), ("user", "q again"), ("assistant", "a")),  # not alternating
        raw(("user", "q3"), ("assistant", "a3"), ("user", "dangling")),  # trailing user
        raw(("user", "q4"), ("assistant", "   ")),  # empty turn -> nothing left
        raw(("user", "q5"), ("assistant", "a5"), ("system", "late")),
    ]
    kept, stats = clean(convs)
    assert [c.messages[0]["content"] for c in kept] == ["q", "q2", "q3"]
    assert stats == {"duplicate": 1, "leading_assistant_removed": 1, "not_alternating": 1,
                     "trailing_user_removed": 1, "cut_at_empty_turn": 1, "no_assistant": 1, "system_not_first": 1}


def test_long_conversations_split_into_whole_pairs():
    long = conv("q1" * 40, "a1" * 40, "q2" * 40, "a2" * 40, "q3" * 40, "a3" * 40, system="sys")
    kept, stats = clean([long], max_tokens=50)
    assert len(kept) == 3 and stats["split_pieces"] == 2
    for piece in kept:
        assert piece.messages[0]["role"] == "system"
        assert [m["role"] for m in piece.messages[1:]] == ["user", "assistant"]


def test_rule_tagger_on_clear_cases():
    t = RuleTagger()
    assert t.tag_text("```python\nprint(1)\n```") == ["code"]
    assert t.tag_text("John has 3 apples. 3*4 = <<3*4=12>>12\n#### 12") == ["math"]
    assert t.tag_text("Write a poem about autumn leaves.") == []
    assert "math" in t.tag_text("Solve the quadratic equation x^2 - 4 = 0")


def test_generated_sources_tagged_as_their_ability():
    t = RuleTagger()
    math = [Conversation([{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}], "g", "math")
            for r in generate_math(200)]
    assert sum("math" in tags for tags in t.tag(math)) == 200


def test_generated_math_answers_are_computed():
    for row in generate_math(300):
        for expr, result in re.findall(r"<<([^=]+)=([^>]+)>>", row["answer"]):
            assert abs(eval(expr) - float(result)) < 1e-9, row  # noqa: S307 (our own generated arithmetic)
        final = row["answer"].split("#### ")[-1]
        assert final.lstrip("-").isdigit()


def test_generated_code_solutions_pass_their_tests():
    rows = generate_code(300)
    assert len({r["instruction"] for r in rows}) == 300
    for row in rows:
        ns: dict = {}
        exec(row["output"] + "\n" + row["test"], ns)  # noqa: S102 (our own generated code)


def test_tag_filters_express_the_ablation():
    a = conv("x", "y")
    a.tags = ["code"]
    b = conv("p", "q")
    b.tags = []
    c = conv("m", "n")
    c.tags = ["math", "code"]
    assert filter_tags([a, b, c], exclude=["code", "math"]) == [b]
    assert filter_tags([a, b, c], include=["math"]) == [c]


def test_sharegpt_without_code_or_math():
    pool = load_pool("sharegpt", SourceConfig(limit=3000), data_dir_cfg="/nonexistent")
    ablated = load_pool("sharegpt", SourceConfig(limit=3000, exclude_tags=["code", "math"]), data_dir_cfg="/nonexistent")
    assert 0 < len(ablated) < len(pool)
    assert ablated.stats["filtered_out"] == len(pool) - len(ablated)
    assert not any({"code", "math"} & set(c.tags) for c in ablated.conversations)


def test_instag_reply_parsing():
    reply = 'Here: [{"tag": "python coding", "explanation": "."}, {"tag": "math problem", "explanation": "."}]'
    tags = parse_instag_reply(reply)
    assert tags == ["python coding", "math problem"]
    assert abilities_from_open_tags(tags) == ["code", "math"]
    assert abilities_from_open_tags(["travel advice"]) == []


def test_llm_tagger_against_loopback_openai_server():
    def reply(body):
        q = body["messages"][0]["content"]
        if "python" in q.lower():
            return '[{"tag": "python coding", "explanation": "asks for code"}]'
        if "integral" in q:
            return '[{"tag": "calculus math", "explanation": "."}]'
        return '[{"tag": "travel planning", "explanation": "."}]'

    srv = OpenAIServer(reply=reply)
    try:
        convs = [conv("Write python to sort a list", "sorted(x)"), conv("What is the integral of x?", "x^2/2"),
                 conv("Plan a trip to Rome", "Day 1 ...")]
        tagger = LLMTagger(srv.url, "instag-local", workers=2)
        apply_tags(convs, tagger)
        assert [c.tags for c in convs] == [["code"], ["math"], []]
        assert tagger.raw_tags[convs[2].id] == ["travel planning"]
        assert all(r["model"] == "instag-local" and r["temperature"] == 0 for r in srv.requests)
    finally:
        srv.close()
