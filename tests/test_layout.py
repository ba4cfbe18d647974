"""The folder layout (``sftmix.layout``): stages in training order, weights in one file or shards."""

from pathlib import Path

from transformers import AutoModelForCausalLM

from sftmix import layout
from sftmix.models import resolve_model


def test_stages_are_in_training_order_past_nine(tmp_path):
    for i in (1, 2, 9, 10, 11):
        (layout.final_dir(layout.stage_dir(tmp_path, i, f"s{i}"))).mkdir(parents=True)
        layout.meta(layout.final_dir(layout.stage_dir(tmp_path, i, f"s{i}"))).write_text("{}")
    (tmp_path / "stage_notes").mkdir()  # not a stage
    assert [layout.stage_index(s) for s in layout.stages(tmp_path)] == [1, 2, 9, 10, 11]  # a glob sorts stage10 before stage2
    assert [p.parent.parent.name for p in layout.stage_metas(tmp_path)] == ["stage1_s1", "stage2_s2", "stage9_s9", "stage10_s10",
                                                                            "stage11_s11"]


def test_parameters_are_counted_over_weight_shards(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny"))
    want = float(sum(p.numel() for n, p in model.state_dict().items() if n != "lm_head.weight" or not model.config.tie_word_embeddings))
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert len(layout.weight_files(tmp_path / "sharded")) > 1 and len(layout.weight_files(tmp_path / "one")) == 1
    assert layout.param_count(tmp_path / "one") == layout.param_count(tmp_path / "sharded") == want
    assert layout.weight_files(Path(tmp_path / "absent")) == []
