"""Model names as a command reads them (``sftmix.models.resolve_model``): a PEFT adapter folder,
such as a LoRA trained with TRL, is its base model with the adapter merged, built once into the
cache. It used to be refused as "not a Hugging Face model folder"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from sftmix.cli import main
from sftmix.errors import SftmixError
from sftmix.models import load_model, load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter of the tiny model whose update is not zero (PEFT starts B at zero)."""
    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    peft = get_peft_model(load_model(resolve_model("tiny")), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                         init_lora_weights=False, task_type="CAUSAL_LM"))
    peft.save_pretrained(folder)
    load_tokenizer(resolve_model("tiny")).save_pretrained(folder)
    return folder


def test_an_adapter_folder_is_its_base_with_the_adapter_merged(adapter):
    merged = resolve_model(str(adapter))
    assert merged != str(adapter) and (adapter / "adapter_config.json").exists()
    x = torch.randint(0, load_tokenizer(merged).vocab_size, (2, 12))
    with torch.no_grad():
        got = load_model(merged)(x).logits
        want = PeftModel.from_pretrained(load_model(resolve_model("tiny")), str(adapter))(x).logits
        base = load_model(resolve_model("tiny"))(x).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(got, base, atol=1e-3)  # the adapter changed something, and the merge kept it
    stamp = files(merged)
    assert resolve_model(str(adapter)) == merged and files(merged) == stamp  # built once


def files(folder: str) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_mtime_ns) for p in Path(folder).iterdir() if p.is_file())


def test_sftmix_eval_measures_an_adapter_folder(adapter, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", str(adapter), "--tasks", "loss", "--loss-sources", "generated_math", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["tasks"]["loss"]["generated_math"]["loss"] > 0


def test_an_adapter_config_without_its_base_is_named(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(SftmixError, match=r"adapter_config.json: not a PEFT adapter config that names its base model"):
        resolve_model(str(tmp_path))
