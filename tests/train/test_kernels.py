"""The training fast paths (``train.kernels``) against the plain path, on the CPU where they run:
each trains to the same losses from the same weights and batches, packed rows attend only within
their own sample, and what a stage used is resolved here and recorded. Paths that need CUDA
(Liger-Kernel, flash-attention) skip, saying so."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

from sftmix.config import KernelSettings, TrainSettings
from sftmix.data.sources import load_pool
from sftmix.errors import SftmixError
from sftmix.io import stable_hash
from sftmix.models import load_model, load_tokenizer, resolve_model
from sftmix.train.stage import (
    Kernels,
    StageTrainer,
    chunked_linear_loss,
    liger_linear_loss,
    loss_for_model,
    resolve_kernels,
    training_arguments,
)
from sftmix.train.tokenize import Collator, tokenize_mixture

CUDA = torch.cuda.is_available()
REPO = Path(__file__).resolve().parents[2]
STEPS = 6


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Tokenised generated-math and generated-code rows for the tiny model (of unequal lengths), one
    sample per row (max length 128) and packed several to a row (384)."""
    path = resolve_model("tiny")
    tok = load_tokenizer(path)
    convs = [c for name in ("generated_math", "generated_code")
             for c in load_pool(name, None).conversations[:24]]
    cache = tmp_path_factory.mktemp("tok")
    plain, _ = tokenize_mixture(convs, stable_hash([c.id for c in convs]), tok, "vicuna", 128, cache_root=cache, progress=False)
    packed, _ = tokenize_mixture(convs, stable_hash([c.id for c in convs]), tok, "vicuna", 384, packing=True, cache_root=cache,
                                 progress=False)
    return path, tok, plain, packed


def train(rows, tmp_path, kernels: Kernels, packing: bool = False, linear_loss=None) -> tuple[list[float], dict]:
    """STEPS optimizer steps of the tiny model from its saved weights in fp32: each step's loss and
    the final weights."""
    path, tok, plain, packed = rows
    torch.manual_seed(0)
    s = TrainSettings(epochs=1, max_steps=STEPS, batch_size=4, per_device_batch_size=4, max_length=128, lr=1e-3, precision="fp32",
                      report_to=[], logging_steps=1, save_steps=10 ** 6, group_by_length=False, packing=packing, warmup_ratio=0.0)
    model = load_model(path, attention=kernels.attention)
    args = training_arguments(s, tmp_path / kernels.attention, 0, 1, progress=False, kernels=kernels)
    trainer = StageTrainer(model=model, args=args, train_dataset=packed if packing else plain, data_collator=Collator(tok.pad_token_id),
                           processing_class=tok, linear_loss=linear_loss)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


PLAIN = Kernels(optimizer="adamw_torch", attention="eager", liger=False, compile=False)


def reference_linear_loss(weight, hidden, targets):
    """The fused linear cross-entropy's meaning, spelt out: logits from the hidden states and the
    output layer's weight, summed token cross-entropy (what Liger computes chunk by chunk)."""
    return F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")


CHUNK = 16  # supervised positions per chunk in the tests: several chunks per batch, the last one short


@pytest.mark.parametrize("fast,linear", [
    (Kernels(optimizer="adamw_torch_fused", attention="eager", liger=False, compile=False), None),
    (Kernels(optimizer="adamw_torch", attention="sdpa", liger=False, compile=False), None),
    (Kernels(optimizer="adamw_torch", attention="eager", liger=False, compile=False), reference_linear_loss),
    (Kernels(optimizer="adamw_torch", attention="eager", liger=False, compile=False, loss="chunked"), chunked_linear_loss(CHUNK)),
], ids=["fused AdamW", "sdpa attention", "loss from hidden states and weight", "loss in chunks"])
def test_each_fast_path_trains_to_the_plain_losses(rows, tmp_path, fast, linear):
    """Same initial weights, same batches, 6 steps at lr 1e-3: every step's loss within 1e-4
    (relative) of the plain path's and the final weights within 1e-4; fp32 rounding stays far
    below that, a wrong loss or update far above (the steps move the loss by ~1e-1)."""
    base, w0 = train(rows, tmp_path / "plain", PLAIN)
    assert abs(base[0] - base[-1]) > 1e-2  # the steps train: a path that did nothing would not match
    got, w1 = train(rows, tmp_path / "fast", fast, linear_loss=linear)
    assert max(abs(a - b) / abs(a) for a, b in zip(base, got)) < 1e-4, (base, got)
    assert max(float((w0[k] - w1[k]).abs().max()) for k in w0) < 1e-4


class LargestLogits(TorchDispatchMode):
    """Every tensor an operation returns, forward and backward: the most rows of ``vocab``-wide
    values (logits, their softmax, their gradient) any one of them holds (``rows``); and the rows
    of such values kept from the forward for the backward, all together (``kept``)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.rows, self.kept = vocab, 0, 0

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 2 and t.shape[-1] == self.vocab:
            self.kept += t.numel() // self.vocab
        return t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


def test_the_chunked_loss_never_holds_more_than_a_chunk_of_logits(rows, tmp_path):
    """One forward and backward through the trainer's loss: in full, some operation returns the
    logits of every supervised position at once (the negative control); in chunks, none returns
    more than a chunk's (or the output layer's own hidden-size-by-vocabulary weight), and the loss
    and the output layer's gradient are the full path's."""
    path, tok, plain, _ = rows
    batch = Collator(tok.pad_token_id)([plain[i] for i in range(4)])
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    seen = {}
    for name, linear in (("full", None), ("chunked", chunked_linear_loss(CHUNK))):
        model = load_model(path, attention="sdpa")
        hidden, vocab = model.config.hidden_size, model.get_output_embeddings().weight.shape[0]
        args = training_arguments(TrainSettings(report_to=[], precision="fp32"), tmp_path / name, 0, 1, False, PLAIN)
        trainer = StageTrainer(model=model, args=args, data_collator=Collator(tok.pad_token_id), processing_class=tok, linear_loss=linear)
        watch = LargestLogits(vocab)
        with watch, torch.autograd.graph.saved_tensors_hooks(watch.keep, lambda t: t):
            loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(supervised))
        with watch:
            loss.backward()
        seen[name] = (watch.rows, watch.kept, float(loss), model.get_output_embeddings().weight.grad.clone())
    assert supervised > 2 * max(CHUNK, hidden), "the batch must hold several chunks' worth of supervised positions"
    assert seen["full"][0] >= supervised and seen["full"][1] >= supervised
    assert seen["chunked"][0] <= max(CHUNK, hidden)
    assert seen["chunked"][1] <= hidden  # recomputed in the backward, not kept: at most the output layer's weight
    assert seen["chunked"][2] == pytest.approx(seen["full"][2], rel=1e-6)
    assert float((seen["chunked"][3] - seen["full"][3]).abs().max()) < 1e-6


def test_the_loss_resolves_per_device_and_falls_back_where_the_weight_is_not_whole():
    """auto: chunked on CUDA, full on the CPU, Liger's where Liger runs. Where the weights are
    sharded (FSDP, ZeRO-3) or the output layer has a bias, a loss from the weight outside the layer
    would be wrong: auto falls back to full and says so in the kernels recorded; chunked asked for
    is an error naming the field."""
    k = resolve_kernels(KernelSettings(), packing=False)
    assert k.loss == ("liger" if k.liger else "chunked" if CUDA else "full")
    assert resolve_kernels(KernelSettings(liger="off", loss="chunked"), False).loss == "chunked"
    assert resolve_kernels(KernelSettings(liger="off", loss="full"), False).loss == "full"
    chunked = Kernels(optimizer="adamw_torch_fused", attention="sdpa", liger=False, compile=False, loss="chunked")
    assert loss_for_model(chunked, KernelSettings(), sharded=False, output_bias=False) == chunked
    for sharded, bias in ((True, False), (False, True)):
        assert loss_for_model(chunked, KernelSettings(), sharded, bias).loss == "full"
        liger = chunked.model_copy(update={"liger": True, "loss": "liger"})
        assert loss_for_model(liger, KernelSettings(), sharded, bias) == liger.model_copy(update={"loss": "full"})
        with pytest.raises(SftmixError, match="train.kernels.loss: chunked computes the loss from the output layer's weight"):
            loss_for_model(chunked, KernelSettings(loss="chunked"), sharded, bias)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flex_attention"])
def test_packed_rows_train_to_the_unpacked_losses_sample_by_sample(rows, tmp_path, attention):
    """A packed row's loss is the unpacked samples' loss: position restarts keep each sample's
    attention inside it, through the trainer's own loss. The check can fail: the same row with
    positions running on (no restarts) lets later samples see earlier ones. FlexAttention (CUDA's
    default for packed rows) is checked here in the forward pass, the loss's value: on the CPU it
    has no backward pass (torch refuses it; ``resolve_kernels`` says so before training)."""
    path, tok, plain, packed = rows
    row = packed[0]
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    assert len(starts) >= 3, "the first packed row holds at least two samples"
    samples = [{"input_ids": row["input_ids"][a:b], "labels": row["labels"][a:b]} for a, b in zip(starts, starts[1:])]
    model = load_model(path, attention=attention).eval()
    assert model.config._attn_implementation == attention
    s = TrainSettings(max_length=128, report_to=[], precision="fp32", batch_size=1, per_device_batch_size=1)
    kernels = Kernels(optimizer="adamw_torch", attention=attention, liger=False, compile=False)
    args = training_arguments(s, tmp_path, 0, 1, False, kernels)
    trainer = StageTrainer(model=model, args=args, data_collator=Collator(tok.pad_token_id), processing_class=tok)
    collate = Collator(tok.pad_token_id, pad_to_multiple_of=0)

    def summed(batch_rows):
        batch = collate(batch_rows)
        n = int((batch["labels"][:, 1:] != -100).sum())
        with torch.no_grad():
            return float(trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(n))) * n, n

    packed_sum, packed_n = summed([{k: row[k] for k in ("input_ids", "labels", "position_ids")}])
    parts = [summed([x]) for x in samples]
    assert packed_n == sum(n for _, n in parts)
    assert packed_sum == pytest.approx(sum(v for v, _ in parts), rel=1e-5), attention
    leaky, _ = summed([{"input_ids": row["input_ids"], "labels": row["labels"],
                        "position_ids": list(range(len(row["input_ids"])))}])
    assert abs(leaky - packed_sum) > 1e-3 * packed_sum, "cross-sample attention would go unnoticed"


def test_kernels_resolve_here_and_refuse_what_cannot_run(tmp_path):
    k = resolve_kernels(KernelSettings(), packing=False)
    assert k.optimizer == "adamw_torch_fused" and k.attention == "sdpa" and k.compile is False
    assert resolve_kernels(KernelSettings(), packing=True).attention == ("flex_attention" if CUDA else "sdpa")
    plain = resolve_kernels(KernelSettings(attention="eager", optimizer="adamw_torch"), False)
    assert plain == Kernels(optimizer="adamw_torch", attention="eager", liger=k.liger, compile=False)
    if not CUDA:
        assert k.liger is False
        with pytest.raises(SftmixError, match=r"train.kernels.liger: on, but .*use auto \(on where it can run\) or off"):
            resolve_kernels(KernelSettings(liger="on"), False)
        with pytest.raises(SftmixError, match="flash_attention_2 needs CUDA and the flash-attn package"):
            resolve_kernels(KernelSettings(attention="flash_attention_2"), False)
        with pytest.raises(SftmixError, match="flex_attention has no backward pass on the CPU .* use auto"):
            resolve_kernels(KernelSettings(attention="flex_attention"), True)
    args = training_arguments(TrainSettings(report_to=[]), tmp_path, 0, 1, False)
    assert str(args.optim.value if hasattr(args.optim, "value") else args.optim) == "adamw_torch_fused"
    assert args.use_liger_kernel is k.liger and args.torch_compile is False


@pytest.mark.skipif(not (CUDA and importlib.util.find_spec("liger_kernel")),
                    reason="Liger-Kernel's Triton kernels run on CUDA only (the gpu extra on a GPU machine)")
def test_liger_trains_to_the_plain_losses(rows, tmp_path):
    base, _ = train(rows, tmp_path / "plain", PLAIN)
    liger = Kernels(optimizer="adamw_torch", attention="eager", liger=True, compile=False)
    got, _ = train(rows, tmp_path / "liger", liger, linear_loss=liger_linear_loss())
    assert max(abs(a - b) / abs(a) for a, b in zip(base, got)) < 1e-3, (base, got)


@pytest.mark.skipif(not CUDA, reason="FlexAttention has no backward pass on the CPU: its training runs on CUDA only "
                                       "(its loss on packed rows is checked here, forward only)")
def test_flex_attention_trains_to_the_plain_losses(rows, tmp_path):
    base, _ = train(rows, tmp_path / "plain", PLAIN, packing=True)
    got, _ = train(rows, tmp_path / "flex", Kernels(optimizer="adamw_torch", attention="flex_attention", liger=False,
                                                     compile=False), packing=True)
    assert max(abs(a - b) / abs(a) for a, b in zip(base, got)) < 1e-4, (base, got)


@pytest.mark.slow
def test_compile_trains_to_the_plain_losses(rows, tmp_path):
    """torch.compile compiles per shape (tens of seconds on the CPU): slow."""
    base, _ = train(rows, tmp_path / "plain", PLAIN, packing=True)
    got, _ = train(rows, tmp_path / "compiled", Kernels(optimizer="adamw_torch", attention="eager", liger=False, compile=True),
                   packing=True)
    assert max(abs(a - b) / abs(a) for a, b in zip(base, got)) < 1e-4, (base, got)


DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (DATA / "gsm8k" / "train.jsonl").exists(), reason=f"the GPU benchmark reads GSM8K and Code Alpaca from {DATA}")
def test_gpu_benchmark_smoke_measures_both_trainers_on_the_same_loss(tmp_path):
    """benchmarks/gpu_train.py in its CPU size: sftmix's packed path, sftmix with gradient
    checkpointing and TRL's default train; the results name the kernels used and whether each
    model recomputed its activations, read from the model (TRL's default does, sftmix's does not
    unless asked: the memory comparison at equal settings rests on it), and every path gives the
    same loss on the same fixed batch."""
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--smoke", "--paths", "sftmix_packed,trl,sftmix_ckpt",
                        "--work", str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    doc = json.loads(out.read_text())
    res = {x["path"]: x for x in doc["results"]}
    assert set(res) == {"sftmix_packed", "trl", "sftmix_ckpt"} and all(x["tokens_per_s"] > 0 and x["steps"] == 4 for x in res.values())
    assert res["sftmix_packed"]["kernels"]["optimizer"] == "adamw_torch_fused" and res["trl"]["packing"] is False
    assert [res[p]["gradient_checkpointing"] for p in ("sftmix_packed", "trl", "sftmix_ckpt")] == [False, True, True]
    losses = [x["loss_fixed_batch"] for x in res.values()]
    assert max(losses) - min(losses) < 1e-4
    shapes = doc["batch_shapes"]
    assert shapes["grouped_padded"] >= shapes["batch_rows"] * shapes["longest_row"] - 8  # the longest row's batch is padded to it
    assert "RATIO sftmix best" in r.stdout and doc["peaks"]["fp32"] > 0
    assert "RATIO memory at equal settings (gradient checkpointing, as TRL's default): sftmix / TRL" in r.stdout
    table = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--markdown", str(out)], capture_output=True,
                           text=True, cwd=REPO, timeout=120).stdout.splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table if line.startswith(("| sftmix", "| trl"))}
    assert set(rows) == set(res) and rows["sftmix_packed"][1] == "2 x 512" and rows["trl"][1] == "8 rows"
    assert rows["sftmix_ckpt"][3] == f"{res['sftmix_ckpt']['mfu']:.1%}"  # the MFU the run computed, not recomputed apart
    assert "gradient_checkpointing True" in rows["trl"][-1] and "gradient_checkpointing False" in rows["sftmix_packed"][-1]


@pytest.mark.skipif(not (DATA / "gsm8k" / "train.jsonl").exists(), reason=f"the GPU benchmark reads GSM8K and Code Alpaca from {DATA}")
def test_gpu_benchmark_cut_short_keeps_what_it_measured_and_measures_without_liger_where_it_fails(tmp_path):
    """A lent GPU gives one call. Its time runs out mid-run: each path's result is in --out as soon
    as it is measured. The run is killed as soon as the file appears, and it holds the first of
    three paths (a benchmark that wrote its results only at the end would show all three, or none).
    And a default path that fails with Liger is measured again without it, saying why: here Liger
    is asked for (``--liger on``) where it cannot run, torch's CPU, and sftmix refuses it."""
    out = tmp_path / "gpu.json"
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--smoke", "--paths",
                             "sftmix,sftmix_unfused,sftmix_loss_full", "--liger", "on", "--work", str(tmp_path / "work"), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    doc = json.loads(out.read_text())
    assert [r["path"] for r in doc["results"]] == ["sftmix"] and doc["results"][0]["tokens_per_s"] > 0
    first = doc["results"][0]
    assert first["kernels"]["liger"] is False and "train.kernels.liger: on, but" in first["liger_failed"], first
    table = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--markdown", str(out)], capture_output=True,
                           text=True, cwd=REPO, timeout=120).stdout
    assert "liger False" in table and "SftmixError: train.kernels.liger: on, but Liger-Kernel is not installed" in table, table


def test_gpu_benchmark_retries_without_liger_only_the_paths_that_train_with_it():
    """Which failed paths the benchmark measures again with Liger off: an sftmix path whose own
    process resolved its kernels with Liger on (sftmix's ``resolve_kernels``, as the path reported
    it before failing), or that asked for Liger where sftmix refused it; never a path that resolved
    Liger off, one that sets it off itself, TRL's, or one that did not fail."""
    spec = importlib.util.spec_from_file_location("gpu_train", REPO / "benchmarks" / "gpu_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    on, off = {"liger": True}, {"liger": False}
    assert bench.failed_with_liger({"path": "sftmix", "failed": "CUDA error", "resolved": on}, "auto")
    assert not bench.failed_with_liger({"path": "sftmix", "failed": "CUDA error", "resolved": off}, "auto")
    assert not bench.failed_with_liger({"path": "sftmix", "tokens_per_s": 1.0, "resolved": on}, "auto")
    assert not bench.failed_with_liger({"path": "trl", "failed": "out of memory"}, "on")
    # refused before resolving: Liger asked for on the paths that leave it to the machine
    assert [bench.failed_with_liger({"path": p, "failed": "x"}, "on") for p in ("sftmix", "sftmix_packed", "sftmix_ckpt",
                                                                              "sftmix_packed_sdpa", "sftmix_compile")] == [True] * 5
    assert not any(bench.failed_with_liger({"path": p, "failed": "x"}, "on")
                   for p in ("sftmix_unfused", "sftmix_loss_full", "sftmix_loss_chunked"))
    assert not bench.failed_with_liger({"path": "sftmix", "failed": "x"}, "auto")


@pytest.mark.skipif(not (DATA / "gsm8k" / "train.jsonl").exists(), reason=f"the GPU benchmark reads GSM8K and Code Alpaca from {DATA}")
def test_gpu_benchmark_a_path_failing_after_its_kernels_resolved_says_which(tmp_path):
    """A path that fails after sftmix resolved its kernels (here its work folder cannot be made)
    carries the kernels its own process resolved, which is what decides a retry without Liger on a
    GPU; on this CPU they have Liger off, so the failure is recorded once, not retried."""
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--smoke", "--paths", "sftmix", "--steps", "2",
                        "--warmup", "1", "--work", "/dev/null/work", "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode == 1, (r.stdout[-3000:], r.stderr[-3000:])
    [res] = json.loads(out.read_text())["results"]
    assert "NotADirectoryError" in res["failed"] and "liger_failed" not in res and "measuring it again" not in r.stdout
    assert res["resolved"] == resolve_kernels(KernelSettings(), packing=False).model_dump(mode="json")
