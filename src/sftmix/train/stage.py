"""One training stage on transformers' ``Trainer`` (under accelerate).

Why ``Trainer`` and not TRL's ``SFTTrainer``: sftmix already tokenises and masks with FastChat's
semantics (and caches the result), so SFTTrainer's data handling would be unused; and on this
kind of CPU its loss path (full-vocabulary logits plus per-step entropy and token-accuracy
metrics) cost 13.1 s/step against 7.5 s/step and about 4 GB more memory in our measurements.
``Trainer`` brings everything else we need: accelerate (DDP, FSDP, DeepSpeed), gradient
accumulation with correct token normalisation, bf16 autocast, checkpoints and resume, trackers.

The one change to ``Trainer``: the loss computes logits only at supervised positions. A
forward pre-hook on the output layer selects those hidden states, so the (batch x length x
vocabulary) logits tensor, which dominates memory and a large share of compute for small models
with big vocabularies, is never built. The loss is the sum of token losses over the number of
supervised tokens in the whole (accumulated, all-process) batch: FastChat/HF token averaging.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from sftmix import layout
from sftmix.compat import checkpointing_argument, is_checkpointing
from sftmix.config import KernelSettings, TrainSettings
from sftmix.data.compose import Composed
from sftmix.errors import SftmixError
from sftmix.io import read_json, write_json
from sftmix.models import cache_dir, load_model, load_tokenizer
from sftmix.progress import quiet
from sftmix.provenance import provenance
from sftmix.supervised import SelectSupervised
from sftmix.train.checkpoints import last_complete_checkpoint
from sftmix.train.curve import curve_points
from sftmix.train.meta import Kernels, Parent, StageMeta
from sftmix.train.tokenize import Collator, tokenize_mixture


class _NoCpuAcceleratorNotice(logging.Filter):
    """DeepSpeed, which accelerate imports whenever it is installed (the ``deepspeed`` extra),
    announces on stdout, where ``sftmix run`` prints its results, that it set its accelerator to
    the CPU when there is no GPU: on a CPU training that is no news, and it broke the results'
    JSON. Every other DeepSpeed message stands."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


logging.getLogger("DeepSpeed").addFilter(_NoCpuAcceleratorNotice())  # before the first training imports DeepSpeed


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(precision: str) -> bool:
    """Whether to train in bf16: asked for, or ``auto`` on a GPU or a CPU with native bf16."""
    if precision == "fp32":
        return False
    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = cpu_has_bf16()
    if precision == "bf16" and not ok:
        raise SftmixError("precision: bf16 was asked for but this hardware has no bf16 support; use auto or fp32")
    return ok


def enable_fsdp_on_cpu(trainer) -> None:
    """Train FSDP on CPU processes when ``accelerate launch`` was given an FSDP config.

    accelerate 1.15 turns FSDP on only for accelerator devices: on CPU processes (gloo) it builds
    plain DDP and drops the FSDP plugin without a word. PyTorch's FSDP2 (``fully_shard``) runs on
    CPU with gloo, so sftmix does what accelerate does on a GPU: it marks the shared state FSDP and
    hands it the plugin read from the launcher's FSDP_* variables (the shipped
    ``configs/accelerate/fsdp.yaml``), with the launch's mixed precision. accelerate's own FSDP2
    code then shards the model, gathers the full state dict and saves and loads checkpoints. This
    is what lets the FSDP path be tested on a machine without GPUs."""
    # imported here: accelerate loads torch; only training needs it
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # AcceleratorState re-reads distributed_type from PartialState whenever it is built again
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True


LIGER_PARTS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}


def resolve_kernels(k: KernelSettings, packing: bool) -> Kernels:
    """The fast paths to use here: ``auto`` resolved for this machine; one asked for that cannot
    run here is an error that says why."""
    cuda = torch.cuda.is_available()
    attention = k.attention if k.attention != "auto" else ("flex_attention" if packing and cuda else "sdpa")
    if attention == "flash_attention_2" and not (cuda and importlib.util.find_spec("flash_attn")):
        raise SftmixError("train.kernels.attention: flash_attention_2 needs CUDA and the flash-attn package "
                          f"({'not installed' if cuda else 'this machine has no CUDA device'}); use auto, sdpa or flex_attention")
    if attention == "flex_attention" and not cuda:
        raise SftmixError(f"train.kernels.attention: flex_attention has no backward pass on the CPU (torch {torch.__version__}), "
                          "and this machine has no CUDA device; use auto (sdpa here) or sdpa, which keep packed samples apart too")
    installed = importlib.util.find_spec("liger_kernel") is not None
    if k.liger == "on" and not (installed and cuda):
        raise SftmixError("train.kernels.liger: on, but " + ("Liger-Kernel is not installed (pip install 'sftmix[gpu]')"
                                                             if not installed else "its kernels run on CUDA and this machine has none")
                          + "; use auto (on where it can run) or off")
    liger = k.liger == "on" or (k.liger == "auto" and installed and cuda)
    loss = "liger" if liger else k.loss if k.loss != "auto" else ("chunked" if cuda else "full")
    return Kernels(optimizer="adamw_torch_fused" if k.optimizer == "auto" else k.optimizer, attention=attention,
                   liger=liger, compile=k.compile, loss=loss)


def loss_for_model(kernels: Kernels, asked: KernelSettings, sharded: bool, output_bias: bool) -> Kernels:
    """``kernels`` with the loss this model can take. A loss from the output layer's weight outside
    that layer's forward (Liger's fused one, the chunked one) reads a shard of it where each process
    holds one (FSDP, ZeRO-3), and leaves out an output bias: there the loss is computed in full, and
    ``loss: chunked`` asked for is an error."""
    if kernels.loss == "full" or not (sharded or output_bias):
        return kernels
    if asked.loss == "chunked":
        why = ("under FSDP or DeepSpeed ZeRO-3 each process holds a shard of it" if sharded
               else "and this model's output layer adds a bias it leaves out")
        raise SftmixError(f"train.kernels.loss: chunked computes the loss from the output layer's weight outside its forward, {why}; "
                          "use auto (full here) or full")
    return kernels.model_copy(update={"loss": "full"})


LOSS_CHUNK = 2048  # supervised positions per chunk: 2,048 x 49,152 logits (SmolLM2's vocabulary) are 0.4 GB in fp32


def chunked_linear_loss(chunk: int = LOSS_CHUNK) -> Callable:
    """The summed cross-entropy of the supervised positions, ``chunk`` positions at a time, as
    ``(weight, hidden, targets) -> summed loss``: each chunk's logits are built, reduced to its loss
    and dropped, and built again in the backward pass (``torch.utils.checkpoint``), so no more than
    ``chunk`` x vocabulary logits exist at once, against all supervised positions' in one piece. The
    same matmul under the same autocast as the output layer's own forward."""

    def piece(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")

    def loss(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            total = total + checkpoint(piece, weight, hidden[part], targets[part], use_reentrant=False)
        return total

    return loss


def linear_loss(kernels: Kernels) -> Callable | None:
    """The loss from the supervised positions' hidden states and the output layer's weight that
    ``kernels.loss`` names, or None: the output layer's own forward and a cross-entropy over its logits."""
    if kernels.loss == "liger":
        return liger_linear_loss()
    return chunked_linear_loss() if kernels.loss == "chunked" else None


def liger_linear_loss() -> Callable:
    """Liger-Kernel's fused linear cross-entropy as ``(weight, hidden, targets) -> summed loss``."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # the gpu extra: only where it runs

    fused = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def loss(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return fused(weight.to(hidden.dtype), hidden, targets)  # the output layer's dtype under autocast

    return loss


class TrainingDiverged(SftmixError):
    """The training loss became nan or inf: the stage stops rather than train on broken weights."""


class StageTrainer(Trainer):
    """``Trainer`` with the supervised-positions-only loss and real-token throughput logging.

    ``linear_loss`` ``(weight, hidden, targets) -> summed loss``: the loss from the supervised
    positions' hidden states and the output layer's weight (a fused linear cross-entropy), instead
    of the output layer's logits and a cross-entropy over them."""

    def __init__(self, *args, linear_loss: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._select = SelectSupervised()
        self.set_linear_loss(linear_loss)
        self.model.get_output_embeddings().register_forward_pre_hook(self._select)
        self.loss_is_scaled_for_ga = True  # our loss is already divided by the accumulated token count
        self.tokens_before = 0  # all processes' real tokens before this run of the stage (a resume)
        self._local_tokens = 0  # this process's real tokens since
        self.weights_held: float | None = None
        self._tokens_at_log = 0
        self._time_at_log = time.perf_counter()

    def set_linear_loss(self, linear_loss: Callable | None) -> None:
        """Compute the loss with ``linear_loss`` (None: from the output layer's logits) from now on."""
        self._linear_loss = linear_loss
        self._select.capture = linear_loss is not None

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        if self.weights_held is None:
            self.weights_held = weights_held(self.model)
        return loss

    def real_tokens(self) -> int:
        """Real (non-padding) tokens trained on so far, over all processes. A collective with more
        than one process: every process calls it at the same point (a log, a curve point, the end)."""
        local = self._local_tokens
        if self.accelerator.num_processes > 1:
            local = int(self.accelerator.reduce(torch.tensor(local, device=self.accelerator.device), "sum").item())
        return self.tokens_before + local

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu(self)

    def _save_rng_state(self, output_dir: str) -> None:
        # Each process writes its own rng_state_N.pth, and process 0 then writes trainer_state.json,
        # which marks the checkpoint finished; Trainer keeps no barrier between the two. Without
        # this one a kill just after the marker could leave another process's RNG file empty (seen
        # under FSDP on 2 loaded CPU processes: rng_state_1.pth of 0 bytes), and the resume crashed.
        super()._save_rng_state(output_dir)
        self.accelerator.wait_for_everyone()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        self._local_tokens += int(inputs.pop("num_real_tokens", torch.zeros(1)).sum())
        inputs.pop("length", None)
        targets_all = labels[:, 1:]
        select = torch.zeros_like(labels, dtype=torch.bool)
        select[:, :-1] = targets_all != -100
        targets = targets_all[targets_all != -100]
        self._select.mask = select
        try:
            logits = model(**inputs, use_cache=False).logits  # (n_supervised, vocab); none with a linear loss
            if self._linear_loss is not None:
                loss = self._linear_loss(self.model.get_output_embeddings().weight, self._select.hidden, targets)
            else:
                loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        finally:
            self._select.mask, self._select.hidden = None, None
        if num_items_in_batch is None:
            loss = loss / max(1, targets.numel()) / self.current_gradient_accumulation_steps
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, {"logits": logits}) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and not math.isfinite(logs["loss"]):
            # every process logs the same loss (gathered over them), so every process stops here
            raise TrainingDiverged(
                f"the training loss is {logs['loss']} at step {self.state.global_step} (gradient norm {logs.get('grad_norm')}, "
                f"learning rate {logs.get('learning_rate')}): training diverged, and every later step would train broken "
                f"weights. Lower train.lr ({self.args.learning_rate:g} here) or warm up longer (train.warmup_ratio); the stage's "
                "checkpoints may hold broken weights too, so train under another name or output_dir")
        if "loss" in logs:
            now, tokens = time.perf_counter(), self.real_tokens()
            logs["real_tokens_per_s"] = round((tokens - self._tokens_at_log) / max(1e-9, now - self._time_at_log), 2)
            logs["real_tokens"] = tokens
            self._tokens_at_log, self._time_at_log = tokens, now
        super().log(logs, start_time)


def _report_to(wanted: list[str]) -> list[str]:
    modules = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    return [w for w in wanted if importlib.util.find_spec(modules.get(w, w)) is not None]


def training_arguments(s: TrainSettings, out_dir: Path, seed: int, world: int, progress: bool,
                       kernels: Kernels | None = None) -> TrainingArguments:
    """Transformers' TrainingArguments for a stage; a batch that does not divide among processes is an error."""
    kernels = kernels or resolve_kernels(s.kernels, s.packing)
    if s.batch_size % (s.per_device_batch_size * world):
        raise SftmixError(f"train.batch_size = {s.batch_size} is not a multiple of per_device_batch_size "
                          f"({s.per_device_batch_size}) x processes ({world})")
    accumulation = s.batch_size // (s.per_device_batch_size * world)
    return TrainingArguments(
        output_dir=str(layout.checkpoints_dir(out_dir)),
        per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps or -1,
        learning_rate=s.lr,
        lr_scheduler_type=s.schedule,
        warmup_steps=s.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=s.weight_decay,
        max_grad_norm=s.max_grad_norm,
        bf16=use_bf16(s.precision),
        **checkpointing_argument(s.gradient_checkpointing),
        logging_steps=s.logging_steps,
        logging_first_step=True,
        # a nan or inf loss is logged as it is, and stops the stage (StageTrainer.log), rather than
        # be replaced by the window's mean: that hid a diverged run, and checked every step on the host
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=1,
        report_to=_report_to(s.report_to) or "none",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length" if s.group_by_length else "random",
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        optim=kernels.optimizer,
        torch_compile=kernels.compile,
        use_liger_kernel=kernels.liger,
        liger_kernel_config=LIGER_PARTS if kernels.liger else None,
    )


def stage_done(out_dir: Path) -> bool:
    """Whether a stage has finished (its final meta.json exists)."""
    return layout.meta(layout.final_dir(out_dir)).exists()


def check_launch(distributed_type) -> None:
    """``accelerate launch`` with an FSDP or DeepSpeed config must train that way. Where accelerate
    does not enable it (as FSDP on CPU processes before ``enable_fsdp_on_cpu``), it trains plain
    DDP without a word, and a config that was never exercised would look tested. Refuse."""
    # imported here: accelerate loads torch; only training needs it
    from accelerate.utils import DistributedType

    for env, want, name in (("ACCELERATE_USE_FSDP", DistributedType.FSDP, "an FSDP"),
                            ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED, "a DeepSpeed")):
        if os.environ.get(env, "false").lower() == "true" and distributed_type != want:
            raise SftmixError(f"accelerate was launched with {name} config, but the trainer runs {distributed_type.value}: "
                              f"accelerate did not enable {name.split()[1]} for these processes, and training as "
                              f"{distributed_type.value} instead would pass for a {name.split()[1]} run; launch with a config "
                              "of what runs here (configs/accelerate/ddp.yaml, fsdp.yaml; DeepSpeed needs the deepspeed extra)")


def train_stage(model_path: str, composed: Composed, settings: TrainSettings, template: str, out_dir: Path,
                seed: int, parent: Parent | None = None, run_config: dict | None = None, progress: bool = True,
                callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train one stage from ``model_path`` on ``composed``; return the final checkpoint folder.

    A finished stage (``final/meta.json`` exists) is skipped; an interrupted one resumes from its
    last complete checkpoint in ``checkpoints/``. ``callbacks`` are handed to the trainer (the
    forgetting curve, ``HeldoutCurve``, is one); one with ``bind(trainer, tokenizer)`` is given the
    stage's trainer, and one with ``record(final, stands_in, tokens)`` adds to the stage's ``meta.json``.
    """
    out_dir = Path(out_dir)
    final = layout.final_dir(out_dir)
    if stage_done(out_dir):
        return final
    # imported here: accelerate loads torch; only training needs it
    from accelerate import PartialState

    state = PartialState()
    tokenizer = load_tokenizer(model_path)
    with state.main_process_first():
        dataset, tok_stats = tokenize_mixture(composed.conversations, composed.manifest.content_sha256, tokenizer,
                                              template, settings.max_length, settings.packing,
                                              cache_dir() / "tokenized", progress=progress and state.is_main_process)
    if len(dataset) == 0:
        raise SftmixError(f"stage {out_dir.name}: no trainable rows after tokenising ({tok_stats})")
    kernels = resolve_kernels(settings.kernels, settings.packing)
    model = load_model(model_path, attention=kernels.attention)
    if settings.lora is not None:
        # imported here: peft loads torch and is only needed for LoRA
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        lora = settings.lora
        model = get_peft_model(model, PeftLora(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    # WORLD_SIZE is set by torchrun / accelerate launch before any process group exists.
    world = int(os.environ.get("WORLD_SIZE", state.num_processes))
    args = training_arguments(settings, out_dir, seed, world, progress, kernels)
    if settings.gradient_checkpointing:
        model.config.use_cache = False
    trainer = StageTrainer(model=model, args=args, train_dataset=dataset, data_collator=Collator(tokenizer.pad_token_id),
                           processing_class=tokenizer)
    if quiet():  # the log lines PrinterCallback prints where the bars are off; they are kept in meta.json
        trainer.remove_callback(PrinterCallback)
    check_launch(trainer.accelerator.distributed_type)
    kernels = loss_for_model(kernels, settings.kernels, sharded_parameters(trainer),
                             getattr(trainer.model.get_output_embeddings(), "bias", None) is not None)
    trainer.set_linear_loss(linear_loss(kernels))
    if settings.lora is not None and sharded_parameters(trainer):
        raise SftmixError("train.lora under FSDP or DeepSpeed ZeRO-3 is not supported: the merged model is saved from "
                          "unsharded weights; train LoRA with configs/accelerate/ddp.yaml or deepspeed_zero2.yaml")
    check_zero3_can_save(trainer)
    for callback in callbacks:
        if hasattr(callback, "bind"):
            callback.bind(trainer, tokenizer)
        trainer.add_callback(callback)
    ckpt_dir = Path(args.output_dir)
    resume = last_complete_checkpoint(ckpt_dir) if state.is_main_process else None
    state.wait_for_everyone()
    if not state.is_main_process:
        resume = last_complete_checkpoint(ckpt_dir)
    if resume:  # carry the token count on from the last log before the checkpoint
        history = read_json(Path(resume) / "trainer_state.json").get("log_history", [])
        trainer.tokens_before = trainer._tokens_at_log = max((h.get("real_tokens", 0) for h in history), default=0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"stage {out_dir.name}: {e}") from None
    wall = time.perf_counter() - t0
    real_tokens = trainer.real_tokens()
    full_state = gather_full_state(trainer) if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled else None
    if state.is_main_process:
        _save_final(trainer, tokenizer, final, settings, full_state)
        # A curve's last point stands in for the final held-out evaluation only where it measured
        # the saved weights as the evaluation would. Not with LoRA (it measured the unmerged adapter
        # model; the saved one is merged), nor with mixed precision under FSDP or DeepSpeed: they
        # run the forward on bf16 copies of the weights (FSDP2's mixed-precision policy, DeepSpeed's
        # bf16 module), 1e-4 away from the fp32 evaluation of the saved weights.
        stands_in = settings.lora is None and not (args.bf16 and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled))
        recorded = {"run_step_end": trainer.state.global_step, "run_tokens_end": real_tokens}
        for callback in callbacks:
            if hasattr(callback, "record"):
                recorded.update(callback.record(final, stands_in, real_tokens))
        meta = StageMeta(
            stage=out_dir.name, base_model=model_path, template=template, seed=seed, train=settings,
            effective_batch=settings.batch_size, processes=state.num_processes,
            distributed_type=str(trainer.accelerator.distributed_type.value), weights_held=trainer.weights_held,
            bf16=args.bf16, trainable_params=trainable, total_params=total, gradient_checkpointing=is_checkpointing(trainer.model),
            kernels=kernels, manifest=composed.manifest, tokenize=tok_stats, parent=parent, run_config=run_config,
            resumed_from=resume, metrics=result.metrics, wall_s=round(wall, 2), real_tokens=real_tokens, **recorded,
            curve=curve_points(trainer.state.log_history, out_dir.name), log_history=trainer.state.log_history, **provenance())
        write_json(layout.meta(final), meta.model_dump(mode="json"))  # written last: its presence marks the stage done
        if not settings.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # resume state (with optimizer) is no longer needed
    state.wait_for_everyone()
    return final


def sharded_parameters(trainer: StageTrainer) -> bool:
    """Whether each process holds only a shard of the weights: FSDP, or DeepSpeed ZeRO-3."""
    ds = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return trainer.is_fsdp_enabled or (ds is not None and ds.zero_stage == 3)


def check_zero3_can_save(trainer: StageTrainer) -> None:
    """ZeRO-3 can hand over the whole model (for the checkpoints' and the final folder's weights)
    only with stage3_gather_16bit_weights_on_model_save; without it the stage would train to the
    end and then fail to save. Refuse before training."""
    ds = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if ds is None or ds.zero_stage != 3:
        return
    if not ds.deepspeed_config.get("zero_optimization", {}).get("stage3_gather_16bit_weights_on_model_save", False):
        raise SftmixError("DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save (zero3_save_16bit_model in an "
                          "accelerate config) cannot save the trained model as a model folder: set it to true, as "
                          "configs/accelerate/deepspeed_zero3.yaml does")


def weights_held(model) -> float:
    """The fraction of the model's weights this process holds: about 1/processes where they are
    sharded (FSDP's DTensors; ZeRO-3's partitions, apart from the small parameters it keeps whole),
    1 where each process has them all. Read after a backward pass: FSDP2 keeps the root module's
    weights gathered between a forward and its backward (and after a forward without one)."""
    held = full = 0
    for p in model.parameters():
        if hasattr(p, "ds_numel"):  # ZeRO-3
            full += p.ds_numel
            held += p.ds_numel if getattr(p, "ds_persist", False) else p.ds_tensor.numel()
        else:
            full += p.numel()
            held += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return round(held / max(1, full), 4)


def gather_full_state(trainer: StageTrainer) -> dict:
    """Sharded weights (FSDP, DeepSpeed ZeRO-3) gathered into one full state dict: a collective,
    every process calls it, the main one gets the tensors. Gathered tensors no longer share
    storage, so a tied weight (the output layer tied to the embeddings) would be saved twice: it
    is kept once, under the name ``save_pretrained`` keeps for an unsharded model."""
    # the DeepSpeed engine knows its ZeRO stage; ZeRO-3 gives the other processes None
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped) or {}
    first: dict[int, str] = {}
    for name, param in trainer.model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(param), name) != name:
            state.pop(name, None)
    return state


def _save_final(trainer: StageTrainer, tokenizer, final: Path, settings: TrainSettings, full_state: dict | None) -> None:
    model = trainer.model
    if settings.lora is not None:
        model = model.merge_and_unload()  # the next stage and the evaluators start from full weights
    final.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(final, state_dict=full_state)
    tokenizer.save_pretrained(final)
