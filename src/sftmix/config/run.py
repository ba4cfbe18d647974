"""Run configuration: data sources, mixtures, training, evaluation and the run as a whole; the
data compose file. Defaults and field descriptions here are what the CLI shows."""

from __future__ import annotations

import copy
import os
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sftmix.errors import SftmixError, closest


def _to_fraction(v: Any) -> float:
    """Accept 0.25, 1, "1/256" or "0.5"; return a float."""
    if isinstance(v, bool):
        raise ValueError("expected a number or a fraction like '1/256'")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(Fraction(v.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction like '1/256', got {v!r}") from None
    raise ValueError(f"expected a number or a fraction like '1/256', got {type(v).__name__}")


Frac = Annotated[float, BeforeValidator(_to_fraction)]
# numpy's and torch's generators take seeds in [0, 2**32): one outside fails only when training starts
Seed = Annotated[int, Field(ge=0, lt=2**32)]


MAX_NAME_BYTES = 200
# The benchmarks whose items a source's rows can be checked against, and the words in a row that
# make a match (sftmix.data.contamination; the run's clean-subset scores use the same)
Benchmark = Literal["gsm8k", "humaneval", "mtbench"]
NGRAM = 13


def folder_name(v: str, nested: bool = True) -> str:
    """A name that names a folder: a run's or study's under ``runs/`` or ``studies/`` (``nested``:
    names joined by '/' are folders in folders, e.g. ``rq1/dmt``), a mixture's or stage's in its
    run or output folder (one folder). Either way it stays below the folder that holds it."""
    parts = v.replace("\\", "/").split("/")
    if not v.strip() or v.startswith(("/", "~")) or any(p in ("", ".", "..") for p in parts) or (len(parts) > 1 and not nested):
        what = "a folder name (or names joined by '/')" if nested else "one folder name (no '/')"
        raise ValueError(f"a name must be {what} that stays below the folder holding it, without '.', '..', empty parts "
                         f"or a leading '/' or '~'; got {v!r}")
    longest = max(len(part.encode()) for part in parts)
    if longest > MAX_NAME_BYTES:  # file systems take 255 bytes a name; the folders add prefixes (stage2_...) and suffixes
        raise ValueError(f"a name's folder is at most {MAX_NAME_BYTES} bytes long (UTF-8); got one of {longest} bytes")
    return v


FolderName = Annotated[str, AfterValidator(folder_name)]  # a run's or a study's
PlainName = Annotated[str, AfterValidator(lambda v: folder_name(v, nested=False))]  # a mixture's or a stage's


def is_task_path(name: str) -> bool:
    """A user task's Python path, ``package.module:attribute``."""
    module, sep, attr = name.partition(":")
    return bool(sep) and bool(module) and attr.isidentifier() and all(p.isidentifier() for p in module.split("."))


class Strict(BaseModel):
    """Base: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf or nan in a config is a typo, never a setting

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        """An unknown key names itself, the closest valid field and every valid one."""
        if isinstance(data, dict):
            valid = list(cls.model_fields)
            bad = [k for k in data if k not in cls.model_fields]
            if bad:
                k = str(bad[0])
                what = f" of the {data.get('name')} strategy" if issubclass(cls, _Strategy) and isinstance(data.get("name"), str) else ""
                raise ValueError(f"unknown field {k!r}{what}{closest(k, valid)}; valid fields: {', '.join(valid)}")
        return data


# ---------------------------------------------------------------- data

class CleanConfig(Strict):
    """Cleaning rules (see ``sftmix.data.clean``)."""

    max_tokens: int | None = Field(None, gt=0, description="split conversations longer than this (approximate tokens: chars/4)")
    dedup: bool = Field(True, description="drop exact duplicates by content id")
    decontaminate: list[Benchmark] = Field(default_factory=list, description=(
        "drop rows that share `ngram` consecutive words with these benchmarks' items (sftmix.data.contamination)"))
    ngram: int = Field(NGRAM, ge=4, le=64, description="words in a row that make a match with `decontaminate` (GPT-3's 13)")

    @field_validator("decontaminate")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            twice = sorted({b for b in v if v.count(b) > 1})
            raise ValueError(f"lists {', '.join(twice)} more than once; give each benchmark once")
        return v

    @model_serializer(mode="wrap")
    def _unused_left_out(self, handler) -> dict:
        # Added after run ids, task keys and manifests were fixed: written only where decontamination
        # is asked for (then `ngram` matters too), so that every earlier run keeps its id
        d = handler(self)
        if not self.decontaminate:
            d.pop("decontaminate", None)
            d.pop("ngram", None)
        return d


class SourceConfig(Strict):
    """Where a source's rows come from, their format and ability, and how they are filtered.

    Resolution order for a built-in source: ``path`` -> the data directory (``data_dir`` in the
    config or ``$SFTMIX_DATA_DIR``) -> ``hub`` via ``datasets.load_dataset`` -> a pip package
    that ships the data. A user source needs ``path`` or ``hub``, a ``format`` and an ``ability``.
    """

    builtin: str | None = Field(None, description="name of a built-in source; defaults to the source's key when that is a built-in name")
    path: str | None = Field(None, description="a file (.json, .jsonl, .parquet, optionally .gz)")
    hub: str | None = Field(None, description="a Hugging Face dataset id (or local dataset folder)")
    hub_config: str | None = Field(None, description="the hub dataset's config name")
    hub_split: str | None = Field(None, description="the hub dataset's split (default: split)")
    format: Literal["alpaca", "sharegpt", "messages", "gsm8k", "gsm8k_rft"] | None = Field(None, description="row format of a user source")
    ability: str | None = Field(None, description="the ability this source trains, e.g. math, code, general")
    split: Literal["train", "test"] = Field("train", description="train, or test for held-out evaluation data")
    limit: int | None = Field(None, gt=0, description="use only the first N raw rows")
    size: int | None = Field(None, gt=0, description="number of rows for generated sources")
    skip_invalid: bool = Field(False, description="skip (and count) rows that do not fit the format instead of failing")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="cleaning rules")
    tagger: Literal["rules", "llm", "none"] = Field("rules", description="how rows are tagged code/math: rules, an LLM, or none")
    include_tags: list[str] = Field(default_factory=list, description="keep only rows with all these tags")
    exclude_tags: list[str] = Field(default_factory=list, description="drop rows with any of these tags (paper 4.2: [code, math])")


class PartConfig(Strict):
    """One part of a mixture: a source (or an earlier mixture to replay) and an amount.

    Give exactly one of ``fraction``, ``count`` or ``k``. See ``sftmix.data.compose`` for the
    rounding rule and the meaning of the normalised ratio ``k``.
    """

    source: str | None = Field(None, description="a source name (key of `sources` or a built-in)")
    replay: str | None = Field(None, description="name of an earlier mixture: draw this amount from each of its parts")
    fraction: Frac | None = Field(None, description="fraction of the source pool, 0 < f <= 1")
    count: int | None = Field(None, description="absolute number of rows")
    k: Frac | None = Field(None, description="normalised ratio (paper 3.4); k = 1 keeps the natural size ratio")
    relative_to: str | None = Field(None, description="with k: the part (source name) whose used fraction anchors the ratio")
    allow_repeat: bool = Field(False, description="allow a count larger than the pool (rows repeat)")

    @model_validator(mode="after")
    def _check(self) -> PartConfig:
        given = [n for n in ("fraction", "count", "k") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of fraction, count, k (got {', '.join(given) or 'none'})")
        if (self.source is None) == (self.replay is None):
            raise ValueError("give exactly one of source, replay")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.k is not None and self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if self.relative_to is not None and self.k is None:
            raise ValueError("relative_to only applies with k")
        return self


class MixtureConfig(Strict):
    """A named union of parts, shuffled with the seed."""

    name: PlainName = Field("mixture", description="the mixture's name (a later replay part names it; its folder in `data compose -o`)")
    parts: list[PartConfig] = Field(..., min_length=1, description="its parts: a source (or a replayed mixture) and an amount")
    shuffle: bool = Field(True, description="shuffle the union with the seed")


class DataConfig(Strict):
    """A compose file: sources and the mixtures built from them (in order)."""

    seed: Seed = Field(0, description="seed of sampling and shuffling")
    data_dir: str | None = Field(None, description="folder with gsm8k/, code_alpaca/, sharegpt/ (else $SFTMIX_DATA_DIR)")
    sources: dict[str, SourceConfig] = Field(default_factory=dict,
        description="source name -> how it is loaded (built-in names need no entry)")
    mixtures: list[MixtureConfig] = Field(..., min_length=1,
        description="the mixtures to compose, in order (a replay part draws from an earlier one)")
    output_format: Literal["jsonl", "arrow"] = Field("jsonl", description="how each mixture is written: data.jsonl or an Arrow dataset")


# ---------------------------------------------------------------- training

class LoraConfig(Strict):
    """LoRA through peft (the base weights stay frozen)."""

    r: int = Field(16, gt=0, description="rank of the LoRA update")
    alpha: int = Field(32, gt=0, description="LoRA scaling (alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA path")
    target_modules: list[str] | str = Field("all-linear", description="modules LoRA adapts: all-linear or a list of names")


class KernelSettings(Strict):
    """How a stage computes, not what it trains: each fast path gives the same loss as the plain
    one up to rounding, so none of them is part of a run's id. What each resolved to is recorded
    in the stage's meta.json (``kernels``)."""

    optimizer: Literal["auto", "adamw_torch_fused", "adamw_torch"] = Field("auto",
        description="auto = PyTorch's fused AdamW (one kernel for every parameter's update; CUDA and CPU)")
    attention: Literal["auto", "sdpa", "flex_attention", "flash_attention_2", "eager"] = Field("auto",
        description="auto = flex_attention for packed rows on CUDA (each sample attends within itself through a block-sparse "
                    "mask, never a dense one), else sdpa; flex_attention trains on CUDA only (it has no backward pass on the CPU); "
                    "flash_attention_2 needs the flash-attn package and CUDA")
    liger: Literal["auto", "on", "off"] = Field("auto",
        description="Liger-Kernel's fused RMSNorm, SwiGLU, RoPE and fused linear cross-entropy on the supervised positions "
                    "(the gpu extra); auto = on where it is installed and CUDA is there, on = an error where it cannot run")
    loss: Literal["auto", "full", "chunked"] = Field("auto",
        description="the output layer's loss over the supervised positions where Liger's fused one is not in use: full = "
                    "all their logits at once; chunked = 2,048 positions at a time, each chunk's logits recomputed in the "
                    "backward pass (at most 2,048 x vocabulary logits held; one more output-layer matmul); auto = chunked "
                    "on CUDA, full on the CPU, and full where the weights are sharded (FSDP, ZeRO-3)")
    compile: bool = Field(False, description="torch.compile the model (pays on long runs; the first steps compile)")


class TrainSettings(Strict):
    """Training settings of a stage. Defaults follow the paper (3 epochs, peak lr 2e-5, batch 16)
    and FastChat's recipe (cosine schedule, weight decay 0); warmup 3% as DESIGN.md states."""

    epochs: float = Field(3.0, gt=0, description="passes over the stage's data")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    lr: float = Field(2e-5, gt=0, description="peak learning rate")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of the steps spent warming up the learning rate")
    schedule: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine", description="learning-rate schedule")
    batch_size: int = Field(16, gt=0, description="effective batch = per_device_batch_size x accumulation x processes")
    per_device_batch_size: int = Field(4, gt=0, description="rows per process per forward pass")
    max_length: int = Field(2048, gt=8, description="tokens per sample; longer samples keep their first max_length tokens")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto",
        description="auto = bf16 autocast where the hardware has bf16 (CUDA, or CPUs with AMX/AVX512-BF16)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (less memory, slower)")
    lora: LoraConfig | None = Field(None, description="LoRA instead of full fine-tuning")
    packing: bool = Field(False, description="pack several samples per row (attention kept within each sample); on a "
                          "GPU 1.28x the tokens/s at 0.65x the memory of length-grouped rows (one H200, README)")
    group_by_length: bool = Field(True, description="batch samples of similar length together (less padding)")
    save_steps: int = Field(200, gt=0, description="checkpoint every N steps (for resume)")
    keep_checkpoints: bool = Field(False, description="keep the resume checkpoints (with optimizer state) after the stage ends")
    logging_steps: int = Field(10, gt=0, description="log the loss every N steps")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"], description="tensorboard, wandb, mlflow (used when installed)")
    seed: Seed | None = Field(None, description="training seed; defaults to the run seed")
    kernels: KernelSettings = Field(default_factory=KernelSettings, description="GPU fast paths (not part of a run's id)")


class StageConfig(Strict):
    """One stage: a mixture and (partial) training settings over the run's defaults."""

    name: PlainName = Field(..., description="the stage's name (its folder stage<i>_<name>)")
    mixture: MixtureConfig = Field(..., description="what the stage trains on")
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of the run's `train` settings")


def _fraction_value(v: float, where: str) -> float:
    if not 0 < v <= 1:
        raise ValueError(f"{where} must be in (0, 1], got {v:g}")
    return v


class _Strategy(Strict):
    """Fields every strategy has: the data amount (``fraction``) of its sources."""

    fraction: Frac | dict[str, Frac] = Field(1.0, description="data amount: fraction of every source pool, or per source "
                                             "(a source the mapping leaves out trains on its whole pool)")

    def used_sources(self) -> list[str]:
        """The sources this strategy trains on, in order."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _fraction_keys(self):
        used = self.used_sources()
        if len(set(used)) != len(used):
            twice = sorted({s for s in used if used.count(s) > 1})
            raise ValueError(f"source {twice[0]!r} is named twice; name each source once")
        if isinstance(self.fraction, dict):
            for key, v in self.fraction.items():
                if key not in used:
                    raise ValueError(f"fraction: {key!r} is not a source of this {self.name} strategy{closest(key, used)}; "
                                     f"its sources: {', '.join(used)}")
                _fraction_value(v, f"fraction.{key}")
        else:
            _fraction_value(self.fraction, "fraction")
        return self

    def legacy_dump(self) -> dict:
        """The strategy as run ids hash it: every field any strategy has, unused ones at their old
        defaults, so that a run's id is the one it had before strategies had a model each (a
        study's stored results keep matching its runs)."""
        return {"sources": [], "specialised": [], "general": None, "k": 0.0, **self.model_dump()}


class IndividualStrategy(_Strategy):
    """One stage on one source (paper: the individual-ability baselines)."""

    name: Literal["individual"] = Field(..., description="individual")
    sources: list[str] = Field(..., description="the one source, e.g. [gsm8k]")

    @field_validator("sources")
    @classmethod
    def _one(cls, v: list[str]) -> list[str]:
        if len(v) != 1:
            raise ValueError(f"the individual strategy trains on one source, e.g. [gsm8k]; got {len(v)}"
                             + (f" ({', '.join(v)}): use multitask to train on several at once" if v else ""))
        return v

    def used_sources(self) -> list[str]:
        """The sources this strategy trains on."""
        return list(self.sources)


class MultitaskStrategy(_Strategy):
    """One stage on the union of the sources (paper: multi-task learning)."""

    name: Literal["multitask"] = Field(..., description="multitask")
    sources: list[str] = Field(..., min_length=1, description="the sources mixed in one stage")

    def used_sources(self) -> list[str]:
        """The sources this strategy trains on."""
        return list(self.sources)


class SequentialStrategy(_Strategy):
    """One stage per source, in order (paper: code -> math -> general)."""

    name: Literal["sequential"] = Field(..., description="sequential")
    sources: list[str] = Field(..., min_length=1, description="the sources in training order")

    def used_sources(self) -> list[str]:
        """The sources this strategy trains on, in stage order."""
        return list(self.sources)


class MixedSequentialStrategy(_Strategy):
    """Stage 1 on the specialised sources together, stage 2 on the general one (DMT with k = 0)."""

    name: Literal["mixed_sequential"] = Field(..., description="mixed_sequential")
    specialised: list[str] = Field(..., min_length=1, description="stage 1 sources (e.g. [gsm8k, code_alpaca])")
    general: str = Field(..., description="stage 2 source (e.g. sharegpt)")

    def used_sources(self) -> list[str]:
        """The sources this strategy trains on: the specialised ones, then the general one."""
        return [*self.specialised, self.general]


class DmtStrategy(MixedSequentialStrategy):
    """Dual-stage Mixed Fine-tuning: stage 2 adds a replayed fraction ``k`` of each stage-1 part."""

    name: Literal["dmt"] = Field(..., description="dmt")
    k: Frac = Field(..., ge=0, le=1, description="fraction of each stage-1 part replayed in stage 2 (0 <= k <= 1; the paper: 1/256)")


STRATEGY_MODELS: dict[str, type[_Strategy]] = {m.model_fields["name"].annotation.__args__[0]: m for m in (
    IndividualStrategy, MultitaskStrategy, SequentialStrategy, MixedSequentialStrategy, DmtStrategy)}

# One of the paper's strategies (Figure 1), chosen by ``name``; each has only its own fields.
# Expanded into stages by ``sftmix.train.strategies``.
StrategyConfig = Annotated[IndividualStrategy | MultitaskStrategy | SequentialStrategy | MixedSequentialStrategy | DmtStrategy,
                           Field(discriminator="name")]


class JudgeConfig(Strict):
    """The MT-Bench judge: any OpenAI-compatible chat endpoint."""

    base_url: str | None = Field(None, description="endpoint, e.g. http://localhost:8000/v1 (else $OPENAI_BASE_URL, else OpenAI)")
    model: str = Field("gpt-4-0613", description="judge model name; record the exact snapshot")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    parallel: int = Field(4, gt=0, description="judgments requested at once")
    max_retries: int = Field(6, ge=0, description="retries of a failed judgment request")


class OpenAIBackendConfig(Strict):
    """Generation through an OpenAI-compatible server (``vllm serve``, SGLang, llama.cpp's server,
    ...): sftmix applies the run's chat template and sends each prompt as a completion, so the
    server sees the text HF generate would see."""

    base_url: str | None = Field(None, description="the server, e.g. http://localhost:8000/v1 (else $SFTMIX_GENERATION_BASE_URL)")
    served_model: str | None = Field(None, description="the model name the server serves (default: the only one it lists)")
    api_key_env: str = Field("SFTMIX_GENERATION_API_KEY", description="environment variable holding the server's API key, if any")
    concurrency: int = Field(8, gt=0, description="requests in flight at once")
    max_retries: int = Field(3, ge=0, description="retries of a failed request (connection errors, 408/429/5xx), with backoff")
    timeout_s: float = Field(600.0, gt=0, description="seconds one request may take")


class VLLMBackendConfig(Strict):
    """vLLM in this process (``pip install 'sftmix[vllm]'`` on a GPU machine)."""

    tensor_parallel_size: int = Field(1, gt=0, description="GPUs the model is split over")
    max_model_len: int | None = Field(None, gt=0, description="longest prompt + answer in tokens (default: the model's)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of each GPU's memory vLLM may take")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("bfloat16", description="vLLM's weights dtype")
    enforce_eager: bool = Field(False, description="no CUDA graphs and no compilation (faster start, slower generation); "
                                "always so on a CPU, where compiling adds minutes to every start")
    cpu_kv_cache_gb: int = Field(2, gt=0, description="KV cache of vLLM's CPU build, in GB ($VLLM_CPU_KVCACHE_SPACE; "
                                 "left to vLLM, it takes most of the machine's memory)")


class VLLMServerConfig(Strict):
    """A ``vllm serve`` that sftmix starts for each evaluation (backend ``vllm_server``): on a free
    loopback port, checked ready within a time limit, answering through the OpenAI-compatible
    client, and stopped afterwards, also on errors, Ctrl-C or the evaluating process being killed.
    vLLM may live in sftmix's environment (the ``vllm`` / ``vllm-cpu`` extras) or in another one
    (``python`` or ``command``)."""

    python: str | None = Field(None, description="the Python of the environment holding vLLM (default: this one); "
                               "runs `PYTHON -m vllm.entrypoints.openai.api_server`")
    command: list[str] | None = Field(None, min_length=1, description="the server command instead, before its arguments, "
                                      "e.g. [/opt/vllm/bin/vllm, serve]; the model path follows it")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(None,
        description="the served weights' dtype (default: eval.dtype, so that greedy answers match HF's)")
    max_model_len: int | None = Field(None, gt=0, description="longest prompt + answer in tokens (default: the model's)")
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs the model is split over")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of each GPU's memory vLLM may take")
    cpu_kv_cache_gb: int = Field(2, gt=0, description="KV cache of vLLM's CPU build, in GB ($VLLM_CPU_KVCACHE_SPACE)")
    compile: bool | None = Field(None, description="let vLLM compile the model (false: -O0 and eager mode); default: on a "
                                 "GPU, not on a CPU, where compiling adds minutes to every start")
    extra_args: list[str] = Field(default_factory=list, description="more arguments for the server, passed as given")
    start_timeout_s: float = Field(900.0, gt=0, description="seconds the server may take to answer before it counts as failed")
    concurrency: int = Field(32, gt=0, description="requests in flight at once (the engine batches them)")


class GSM8KSettings(Strict):
    """GSM8K (evaluation-protocol.md): greedy, exact match of the final number."""

    max_new_tokens: int = Field(512, gt=0, description="generation budget per problem")


class HumanEvalSettings(Strict):
    """HumanEval (evaluation-protocol.md): greedy pass@1 of sandboxed completions."""

    max_new_tokens: int = Field(512, gt=0, description="generation budget per problem")
    wrapper: Literal["complete", "raw"] = Field("complete", description="the user turn: complete = 'Complete the following "
                                                "python code:' + the prompt; raw = the prompt alone")
    workers: int = Field(4, gt=0, description="sandboxed executions at once")


class MTBenchSettings(Strict):
    """MT-Bench (evaluation-protocol.md): two turns per question, rated 1-10 by an LLM judge."""

    max_new_tokens: int = Field(1024, gt=0, description="generation budget per turn")
    repeats: int = Field(1, gt=0, description="full repeats of generation and judging (the paper: 3)")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="the judge (an OpenAI-compatible chat endpoint)")


# Where the settings of the flat eval section of earlier versions now live (a config that still
# uses one is told where it went; run ids are computed from the flat form, so they do not change).
MOVED = {"gsm8k_max_new_tokens": "eval.gsm8k.max_new_tokens", "humaneval_max_new_tokens": "eval.humaneval.max_new_tokens",
         "humaneval_wrapper": "eval.humaneval.wrapper", "humaneval_workers": "eval.humaneval.workers",
         "mtbench_max_new_tokens": "eval.mtbench.max_new_tokens", "mtbench_repeats": "eval.mtbench.repeats",
         "judge": "eval.mtbench.judge", "loss_sources": "heldout.sources", "loss_samples": "heldout.samples",
         "loss_max_length": "heldout.max_length", "heldout_seed": "heldout.seed", "curve": "curve.enabled",
         "curve_points": "curve.points"}


def upgrade(doc: dict) -> dict:
    """A run config as an earlier version wrote it (a flat ``eval``; a study's results store keeps
    each run's config as it was run) in today's form, each moved key in its new place; ``doc`` is
    not changed."""
    doc = copy.deepcopy(doc)
    ev = doc.get("eval")
    for old, new in MOVED.items():
        if isinstance(ev, dict) and old in ev:
            node, (*outer, last) = doc, new.split(".")
            for name in outer:
                node = node.setdefault(name, {})
            node[last] = ev.pop(old)
    return doc


class EvalConfig(Strict):
    """What the final evaluation measures and how: the tasks, the generation engine, and each
    benchmark's settings (see evaluation-protocol.md). The held-out rows the loss task scores are
    the run's (``heldout``)."""

    tasks: list[str] = Field(default_factory=lambda: ["loss"], min_length=1, description=(
        "gsm8k, humaneval, mtbench, loss, or a task of your own as package.module:attribute (a sftmix.eval.tasks.Task)"))
  # names are checked against the task registry when the run is planned (``eval.tasks.resolve``); their form here
    limit: int | None = Field(None, gt=0, description="first N problems of each generation benchmark")
    data_dir: str | None = Field(None,
        description="folder with gsm8k/test.jsonl and mt_bench/ (else the run's data_dir / $SFTMIX_DATA_DIR)")
    backend: Literal["auto", "hf", "vllm", "vllm_server", "openai"] = Field("auto", description=(
        "generation engine; auto: vLLM in process on a GPU when installed, else transformers; vllm_server: a `vllm serve` "
        "sftmix starts and stops for each evaluation (eval.vllm_server); openai: a server you run (eval.openai)"))
    openai: OpenAIBackendConfig = Field(default_factory=OpenAIBackendConfig, description="the server of backend openai")
    vllm: VLLMBackendConfig = Field(default_factory=VLLMBackendConfig, description="settings of backend vllm")
    vllm_server: VLLMServerConfig = Field(default_factory=VLLMServerConfig, description="the managed server of backend vllm_server")
    batch_size: int = Field(8, gt=0, description="prompts generated (or held-out rows scored) per batch")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="generation weights; bfloat16 is about 2x faster on CPUs with AMX "
                                                  "but greedy outputs then depend on the batch composition")
    gsm8k: GSM8KSettings = Field(default_factory=GSM8KSettings, description="GSM8K's settings")
    humaneval: HumanEvalSettings = Field(default_factory=HumanEvalSettings, description="HumanEval's settings")
    mtbench: MTBenchSettings = Field(default_factory=MTBenchSettings, description="MT-Bench's settings, its judge included")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, v: list[str]) -> list[str]:
        for name in v:  # the form only: which names exist is the task registry's (checked when the run is planned)
            if (":" in name or "." in name) and not is_task_path(name):
                raise ValueError(f"task {name!r}: a user task is named as package.module:attribute (e.g. my_pkg.tasks:sql_exact)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict):
            for k in data:
                if k in MOVED:
                    raise ValueError(f"eval.{k} is now {MOVED[k]}")
        return data


class HeldoutConfig(Strict):
    """The run's held-out rows, chosen once before training (``heldout.json``): training leaves
    them out of its pools and measures them for the forgetting curves; the loss task scores them."""

    sources: list[str] = Field(default_factory=lambda: ["gsm8k", "code_alpaca", "sharegpt"], min_length=1,
                               description="sources whose held-out rows are measured (the loss task: one metric each)")
    samples: int = Field(64, gt=0, description="held-out rows per source")
    max_length: int = Field(512, gt=8, description="tokens per held-out row at most")
    seed: Seed = Field(0, description="seed choosing the held-out rows of sources without a test split; fixed across "
                      "runs and replicates so that they are measured on the same rows (paired comparisons)")


class CurveConfig(Strict):
    """The forgetting curves: held-out loss of every held-out source measured during training."""

    enabled: bool = Field(True, description="measure the curves (when the run's eval tasks include loss)")
    points: int = Field(4, ge=0, description="points per training stage besides its start and end; 0 = start and end only")


class RunConfig(Strict):
    """A training run: model, template, data, strategy (or explicit stages) and settings."""

    name: FolderName = Field("run", description="the run's name (its folder runs/<name> by default)")
    model: str = Field("smollm2", description="smollm2 (embedded default), tiny, a hub id, a local folder or a .gguf file")
    template: Literal["vicuna", "model"] = Field("vicuna",
        description="vicuna = FastChat's Vicuna v1.1; model = the tokenizer's chat template")
    seed: Seed = Field(0, description="seed of data sampling and training")
    data_dir: str | None = Field(None, description="folder with gsm8k/, code_alpaca/, sharegpt/ (else $SFTMIX_DATA_DIR)")
    sources: dict[str, SourceConfig] = Field(default_factory=dict,
        description="source name -> how it is loaded (built-in names need no entry)")
    strategy: StrategyConfig | None = Field(None, description="one of the paper's strategies (or give stages)")
    stages: list[StageConfig] | None = Field(None, description="explicit stages instead of a strategy")
    train: TrainSettings = Field(default_factory=TrainSettings, description="training settings of every stage")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="what the final evaluation measures")
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig, description="the run's held-out rows (training's and the loss task's)")
    curve: CurveConfig = Field(default_factory=CurveConfig, description="the forgetting curves measured during training")
    output_dir: str | None = Field(None, description="defaults to runs/<name>")

    def legacy_dump(self) -> dict:
        """The config as run ids hash it: the strategy with every field any strategy has
        (``_Strategy.legacy_dump``) and the eval section flat, as it was before the held-out rows,
        the curves and each benchmark got sections of their own, so that a run's id (and a study's
        stored results) stay what they were."""
        d = self.model_dump()
        if self.strategy is not None:
            d["strategy"] = self.strategy.legacy_dump()
        h, c, ev = d.pop("heldout"), d.pop("curve"), d["eval"]
        g, he, mt = ev.pop("gsm8k"), ev.pop("humaneval"), ev.pop("mtbench")
        ev.update(gsm8k_max_new_tokens=g["max_new_tokens"], humaneval_max_new_tokens=he["max_new_tokens"],
                  humaneval_wrapper=he["wrapper"], humaneval_workers=he["workers"], mtbench_max_new_tokens=mt["max_new_tokens"],
                  mtbench_repeats=mt["repeats"], judge=mt["judge"], loss_sources=h["sources"], loss_samples=h["samples"],
                  loss_max_length=h["max_length"], heldout_seed=h["seed"], curve=c["enabled"], curve_points=c["points"])
        return d

    @model_validator(mode="after")
    def _one_plan(self) -> RunConfig:
        if (self.strategy is None) == (self.stages is None):
            raise ValueError("give exactly one of `strategy` or `stages`")
        if self.stages is not None and not self.stages:
            raise ValueError("`stages` is empty")
        return self


# ---------------------------------------------------------------- loading

M = TypeVar("M", bound=BaseModel)


def format_validation_error(err: ValidationError, where: str) -> str:
    """A pydantic error as lines naming ``where`` and each bad field's path, with what was expected."""
    lines = [f"{where}: invalid config"]
    for e in err.errors():
        steps = [p for i, p in enumerate(e["loc"]) if not (i and e["loc"][i - 1] == "strategy" and p in STRATEGY_MODELS)]
        msg = e["msg"]
        if e["type"] in ("union_tag_invalid", "union_tag_not_found") and e.get("ctx", {}).get("discriminator") == "'name'":
            steps.append("name")
            tag = e["ctx"].get("tag")
            msg = (f"unknown strategy {tag!r}{closest(str(tag), STRATEGY_MODELS)}" if tag is not None else "missing") + \
                f"; valid: {', '.join(STRATEGY_MODELS)}"
            e = {**e, "input": tag}
        loc = ".".join(str(p) for p in steps) or "(top level)"
        value = e.get("input")
        if "got " in msg or isinstance(value, dict):
            # the message names the value already, or the value is the mapping that holds the bad
            # field (a whole config's dump would bury the message)
            lines.append(f"  {loc}: {msg}")
            continue
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {loc}: {msg} (got {shown})")
    return "\n".join(lines)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key written twice in one mapping is an error naming both lines.
    PyYAML keeps the last silently (the YAML spec says keys are unique), so a `train.lr` written
    twice in a long config trained with whichever came second. A merge (`<<: *base`) may still
    be overridden by a key of the mapping itself, as YAML says."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is written twice in one mapping (first on line {first.line + 1}); "
                        "YAML keeps only one of them: delete the other", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str):
    """YAML text as Python values (the safe loader), refusing a key written twice in one mapping."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML config file as a mapping; a missing file, bad YAML (a key written twice included) or
    a non-mapping is an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise SftmixError(f"{path}: config file not found")
    if path.is_dir():
        raise SftmixError(f"{path}: is a folder; expected a YAML config file")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SftmixError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise SftmixError(f"{path}{at}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SftmixError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate(model: type[M], data: dict, where: str) -> M:
    """Build ``model`` from ``data``; a failure names ``where``, each field, value and rule."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SftmixError(format_validation_error(e, where)) from None


def load_config(path: str | os.PathLike, model: type[M]) -> M:
    """Read and validate a YAML config file as ``model``."""
    return validate(model, read_yaml(path), str(path))


def differing_fields(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted paths where two nested dicts hold different values."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += differing_fields(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def get_path(d: dict, path: str) -> Any:
    """The value at a dotted path of nested dicts (``train.lr``); None where any part is missing."""
    node: Any = d
    for name in path.split("."):
        if not isinstance(node, dict) or name not in node:
            return None
        node = node[name]
    return node


def pop_path(d: dict, path: str) -> None:
    """Remove the value at a dotted path of nested dicts, where it is there."""
    *outer, last = path.split(".")
    section = get_path(d, ".".join(outer)) if outer else d
    if isinstance(section, dict):
        section.pop(last, None)


def apply_overrides(data: dict, overrides: list[str], where: str = "command line") -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict.

    A path step into a list takes an index (``mixtures.0.name=x``); a step into a mapping creates
    it when missing. A step into a scalar, a bad index or an unparsable value is a ``SftmixError``
    naming the override and the step.
    """
    given: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise SftmixError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        if key in given:  # which one was meant? (Hydra refuses the same)
            raise SftmixError(f"override {item!r}: {key} is set twice among the overrides (also {given[key]!r}); give it once")
        given[key] = item
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise SftmixError(f"override {item!r}: empty step in key path {key!r}")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as e:
            raise SftmixError(f"override {item!r}: value is not valid YAML ({getattr(e, 'problem', e)})") from None
        node: Any = data
        for depth, p in enumerate(parts):
            here = ".".join(parts[:depth]) or "(top level)"
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not (p.isdigit() or (p.startswith("-") and p[1:].isdigit())):
                    raise SftmixError(f"override {item!r}: {here} is a list; {p!r} is not an index (0..{len(node) - 1})")
                i = int(p)
                if not -len(node) <= i < len(node):
                    raise SftmixError(f"override {item!r}: {here} has {len(node)} item(s); index {i} is out of range")
                if last:
                    node[i] = value
                else:
                    node = node[i]
            elif isinstance(node, dict):
                if last:
                    node[p] = value
                else:
                    node = node.setdefault(p, {})
            else:
                raise SftmixError(f"override {item!r}: {here} holds the {type(node).__name__} value {node!r}, not a mapping "
                                  f"or list; it has no field {p!r}")
    return data
