"""A run's held-out rows are chosen once, kept in ``heldout.json`` and read back by every later step."""

import json

import pytest

from sftmix.config import SourceConfig
from sftmix.data.heldout import POOL_TAIL, TEST_SPLIT, HeldoutRows, choose, heldout, read_or_choose
from sftmix.data.sources import load_pool
from sftmix.errors import SftmixError
from sftmix.io import write_jsonl


@pytest.fixture
def sources(tmp_path):
    """A user source without a test split (its held-out rows are its pool's tail), a generated
    source with one, and a user source whose file is missing."""
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} said."} for i in range(30)]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    return {"chat": SourceConfig(path=str(tmp_path / "chat.jsonl"), format="alpaca", ability="general"),
            "generated_math": SourceConfig(size=24),
            "gone": SourceConfig(path=str(tmp_path / "missing.jsonl"), format="alpaca", ability="general")}


def ids(rows):
    return [c.id for c in rows]


def test_rows_follow_the_rule_and_a_missing_source_is_recorded(sources):
    held = choose(["chat", "generated_math", "gone"], 5, 0, sources, None)
    assert held.how == {"chat": POOL_TAIL, "generated_math": TEST_SPLIT}
    tail = heldout("chat", 5, 0, sources["chat"], None)[0]
    assert ids(held.rows("chat")) == ids(tail) and len(tail) == 5
    # training leaves out the pool-tail rows only: a test split never was in the train pool
    assert held.excluded("chat") == set(ids(tail)) and held.excluded("generated_math") == set()
    train_ids = {c.id for c in load_pool("generated_math", sources["generated_math"], None).conversations}
    assert not train_ids & set(ids(held.rows("generated_math")))
    assert "missing.jsonl" in held.errors["gone"]
    with pytest.raises(SftmixError, match="missing.jsonl"):
        held.rows("gone")


def test_chosen_once_then_read_back(tmp_path, sources):
    path = tmp_path / "run" / "heldout.json"
    first = read_or_choose(path, ["chat", "generated_math"], 5, 0, sources, None)
    before = path.read_bytes()

    def no_loading(name):
        raise AssertionError(f"the pool of {name} was loaded again")

    again = read_or_choose(path, ["chat", "generated_math"], 5, 0, sources, None, pool=no_loading)
    assert path.read_bytes() == before
    assert {n: ids(v) for n, v in again.sets.items()} == {n: ids(v) for n, v in first.sets.items()}
    assert again.how == first.how
    # what is in the file is what is used, whatever the rule would choose today
    doc = json.loads(before)
    doc["sets"]["chat"] = doc["sets"]["chat"][:2]
    path.write_text(json.dumps(doc))
    assert len(read_or_choose(path, ["chat", "generated_math"], 5, 0, sources, None).rows("chat")) == 2


def test_other_settings_choose_again(tmp_path, sources):
    path = tmp_path / "heldout.json"
    five = read_or_choose(path, ["chat"], 5, 0, sources, None)
    other_seed = read_or_choose(path, ["chat"], 5, 1, sources, None)
    assert ids(other_seed.rows("chat")) != ids(five.rows("chat"))
    assert HeldoutRows.from_json(json.loads(path.read_text()), "f").settings["seed"] == 1
    assert len(read_or_choose(path, ["chat"], 7, 1, sources, None).rows("chat")) == 7
    assert set(read_or_choose(path, ["chat", "generated_math"], 7, 1, sources, None).sets) == {"chat", "generated_math"}


@pytest.mark.parametrize("text, why", [
    ("{not json", "JSONDecodeError"),
    ('{"version": 99, "settings": {}, "how": {}, "errors": {}, "sets": {}}', "version 99"),
    ('{"version": 1, "settings": {}, "how": {}, "errors": {}}', "sets"),
    ('{"version": 1, "settings": {}, "how": {"chat": "guess"}, "errors": {}, "sets": {"chat": []}}', "rule"),
    ('{"version": 1, "settings": {}, "how": {"chat": "test split"}, "errors": {}, "sets": {"chat": [{"id": 3}]}}', "chat|messages"),
])
def test_a_malformed_file_is_an_error_naming_it(tmp_path, sources, text, why):
    path = tmp_path / "heldout.json"
    path.write_text(text)
    with pytest.raises(SftmixError, match=why) as e:
        read_or_choose(path, ["chat"], 5, 0, sources, None)
    assert str(path) in str(e.value) and "delete it" in str(e.value)
    assert path.read_text() == text  # nothing overwritten


def test_a_source_that_could_not_be_loaded_is_tried_again(tmp_path, sources):
    """An error kept in the file is not replayed forever: once the data is there, its rows are
    chosen (the rows already chosen are kept as they were)."""
    path = tmp_path / "heldout.json"
    first = read_or_choose(path, ["chat", "gone"], 5, 0, sources, None)
    assert "gone" in first.errors
    rows = [{"instruction": f"Ask {i}.", "input": "", "output": f"{i} asked."} for i in range(20)]
    write_jsonl(tmp_path / "missing.jsonl", rows)
    again = read_or_choose(path, ["chat", "gone"], 5, 0, sources, None)
    assert not again.errors and len(again.rows("gone")) == 5 and list(again.sets) == ["chat", "gone"]
    assert [c.id for c in again.rows("chat")] == [c.id for c in first.rows("chat")]
    assert HeldoutRows.from_json(json.loads(path.read_text()), "f").errors == {}
