"""Generation backends with one interface: ``generate(prompts, max_new_tokens, temperature, stop)``.

- ``HFGenerator``: batched ``model.generate`` with left padding. Prompts are sorted by length so
  that each batch pads little, then answers are returned in the input order. Greedy batched output
  equals batch-1 output (a test checks this on the tiny model in fp32).
- ``VLLMGenerator``: vLLM in this process (GPU machines; the ``vllm`` extra), with tensor
  parallelism, dtype, maximum length and memory fraction from ``eval.vllm``.
- ``OpenAIGenerator``: any OpenAI-compatible server (``vllm serve``, SGLang, llama.cpp's server):
  sftmix applies the chat template itself and sends each prompt as a completion, so the server
  sees the text HF generate sees; requests run concurrently (bounded), failed ones are retried,
  and a server that is down or answers with errors is an error, never an empty answer.
- ``ManagedServerGenerator``: the same client, to a ``vllm serve`` of the checkpoint that sftmix
  starts for this evaluation and stops with ``close`` (``sftmix.eval.engine``).

Each backend says which engine answered (``engine()``: backend, engine and version, dtype); the
evaluation records it with its results.

Every backend answers through ``Generator.generate``: with a cache (``use_cache``) each answer is
appended to a JSONL file as it arrives, so a killed evaluation resumes without regenerating what
was answered.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from pydantic import BaseModel

from sftmix.config.run import OpenAIBackendConfig, VLLMBackendConfig, VLLMServerConfig
from sftmix.errors import SftmixError
from sftmix.io import read_appended, stable_hash
from sftmix.models import load_model, load_tokenizer
from sftmix.progress import track


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Truncate ``text`` at the earliest stop string."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


class CachedAnswer(BaseModel):
    """A line of a generation cache: the answer to the prompt and settings hashed as ``key``."""

    key: str
    text: str


class AnswerCache:
    """Answers already generated, one ``CachedAnswer`` line each, appended as they arrive. A line
    torn by a kill is cut off when the cache is opened (that answer is generated again)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.answers: dict[str, str] = {}
        if self.path.exists():
            self.answers = {a.key: a.text for a in read_appended(self.path, CachedAnswer)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed with the generator

    def add(self, key: str, text: str) -> None:
        """Keep an answer, appended to the cache file at once."""
        self.answers[key] = text
        self._f.write(CachedAnswer(key=key, text=text).model_dump_json() + "\n")
        self._f.flush()

    def close(self) -> None:
        """Close the cache file."""
        self._f.close()


class Generator:
    """What every backend shares: the cache and the order of answers. A backend implements
    ``_answers(prompts, ...)``, yielding (index, text) as each answer is ready."""

    name = "base"
    identity: tuple = ()  # what, besides the prompt and settings, decides an answer (backend, dtype)
    cache: AnswerCache | None = None
    progress = True
    tokenizer = None  # each backend sets its own: it renders prompts and counts the tokens an answer costs
    tokens_processed = 0  # prompt and answer tokens of every answer given, cached ones too (2·N FLOPs each)
    context: int | None = None  # positions the model reads, prompt and answer together, where the backend knows it

    def use_cache(self, path: str | Path) -> None:
        """Serve and keep answers in the JSONL file at ``path`` (a rerun generates only what is missing)."""
        self.cache = AnswerCache(path)

    def generate(self, prompts: list[str], max_new_tokens: int = 512, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, desc: str = "generating") -> list[str]:
        """One completion per prompt (greedy unless ``temperature``), cut at ``stop``; cached answers are reused."""
        settings = [max_new_tokens, round(float(temperature), 6), list(stop), seed if temperature > 1e-4 else None]
        keys = [stable_hash([*self.identity, p, *settings], 24) for p in prompts]
        known = self.cache.answers if self.cache else {}
        out: list[str | None] = [known.get(k) for k in keys]
        todo = [i for i, t in enumerate(out) if t is None]
        if todo and self.context is not None and max_new_tokens >= self.context:
            # transformers only warns and generates on past the positions the model was trained for
            raise SftmixError(f"{desc}: max_new_tokens = {max_new_tokens} is not below the model's context of {self.context:,} "
                              "positions, which also hold the prompt; lower the task's max_new_tokens (eval.<task>.max_new_tokens, --max-new-tokens)")
        if todo:
            for j, text in self._answers([prompts[i] for i in todo], max_new_tokens, temperature, list(stop), seed, desc):
                i = todo[j]
                out[i] = cut_at_stop(text, stop)
                if self.cache:
                    self.cache.add(keys[i], out[i])
        self.tokens_processed += self.count_tokens(prompts, out)
        return out  # type: ignore[return-value]

    def count_tokens(self, prompts: list[str], answers: list[str]) -> int:
        """The tokens of the prompts as the model reads them (special tokens included) plus those of
        the answers: what generating them costs, a forward pass over each."""
        if not prompts:
            return 0
        if self.tokenizer is None:  # a count of 0 would pass for a task that cost nothing
            raise SftmixError(f"{type(self).__name__} has no tokenizer to count the tokens its answers cost")
        read = self.tokenizer(list(prompts))["input_ids"]
        written = self.tokenizer(list(answers), add_special_tokens=False)["input_ids"]
        return sum(map(len, read)) + sum(map(len, written))

    def _answers(self, prompts, max_new_tokens, temperature, stop, seed, desc) -> Iterator[tuple[int, str]]:
        raise NotImplementedError

    def engine(self) -> dict:
        """Which engine answers: backend, engine with its version, dtype."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds (the cache file; a managed server)."""
        if self.cache is not None:
            self.cache.close()


class HFGenerator(Generator):
    """Batched Hugging Face generation."""

    name = "hf"

    def __init__(self, model_path: str, batch_size: int = 8, dtype: str = "float32", progress: bool = True):
        # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
        import torch

        self.tokenizer = load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU machine generates on its GPU
        self.model = load_model(model_path, dtype).to(self.device)
        self.model.eval()
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.batch_size = batch_size
        self.progress = progress
        self.torch = torch
        self.identity = ("hf", dtype)
        self.dtype = dtype

    def engine(self) -> dict:
        """transformers' generate, with its version."""
        return {"backend": "hf", "engine": f"transformers {transformers_version()}", "dtype": self.dtype}

    def _answers(self, prompts, max_new_tokens, temperature, stop, seed, desc):
        torch = self.torch
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in track(batches, desc, enabled=self.progress):
            enc = self.tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=True).to(self.device)
            kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                          eos_token_id=self.tokenizer.eos_token_id)
            if temperature and temperature > 1e-4:
                torch.manual_seed(seed)
                kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                kwargs.update(do_sample=False)
            if stop:
                kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
            with torch.no_grad():
                gen = self.model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            for j, i in enumerate(batch):
                yield i, self.tokenizer.decode(new[j], skip_special_tokens=True)


class VLLMGenerator(Generator):
    """vLLM in this process. Same interface as ``HFGenerator``; prompts go in chunks so that a
    killed evaluation keeps what was answered."""

    name = "vllm"
    chunk = 256

    def __init__(self, model_path: str, cfg=None, progress: bool = True):
        try:
            # imported here: vllm is an optional extra, needed only by its backend
            from vllm import LLM
        except ImportError as e:
            raise SftmixError(f"eval.backend vllm: vLLM cannot be imported here ({e}); install the vllm extra on a GPU machine, "
                              "or serve the model with `vllm serve` in its own environment and use backend openai") from None
        cfg = cfg or VLLMBackendConfig()
        eager = cfg.enforce_eager or not _cuda()
        kwargs = dict(model=model_path, dtype=cfg.dtype, tensor_parallel_size=cfg.tensor_parallel_size,
                      gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=eager)
        if eager:
            kwargs["optimization_level"] = 0  # no torch.compile either
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kv_cache_gb))  # read by the engine process (CPU build only)
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        self.llm = LLM(**kwargs)
        self.context = getattr(getattr(self.llm.llm_engine, "model_config", None), "max_model_len", None)
        self.tokenizer = self.llm.get_tokenizer()
        self.progress = progress
        self.identity = ("vllm", cfg.dtype)
        self.dtype = cfg.dtype

    def close(self) -> None:
        """Close the cache and shut vLLM's engine process down (else it is torn down at exit, noisily)."""
        super().close()
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()

    def engine(self) -> dict:
        """vLLM in this process, with its version."""
        # imported here: vllm is an optional extra, needed only by its backend
        import vllm

        return {"backend": "vllm", "engine": f"vllm {vllm.__version__}", "dtype": self.dtype}

    def _answers(self, prompts, max_new_tokens, temperature, stop, seed, desc):
        # imported here: vllm is an optional extra, needed only by its backend
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if temperature > 1e-4 else 0.0,
                                stop=list(stop) or None, seed=seed)
        for start in track(range(0, len(prompts), self.chunk), desc, enabled=self.progress):
            try:
                outs = self.llm.generate(prompts[start: start + self.chunk], params, use_tqdm=False)
            except Exception as e:
                if type(e).__name__ != "EngineDeadError":  # by name: where vLLM defines it has moved between versions
                    raise
                raise SftmixError("eval.backend vllm: vLLM's engine died while generating; the engine logged why (its first "
                                  "error, on standard output), e.g. a model shape its attention cannot run on this device "
                                  f"({e})") from None
            for j, o in enumerate(outs):
                yield start + j, o.outputs[0].text


class OpenAIGenerator(Generator):
    """Completions from an OpenAI-compatible server (see the module docstring)."""

    name = "openai"

    def __init__(self, model_path: str, cfg=None, progress: bool = True):
        # imported here: openai is only needed when an OpenAI-compatible endpoint is called
        import openai

        cfg = cfg or OpenAIBackendConfig()
        self.base_url = cfg.base_url or os.environ.get("SFTMIX_GENERATION_BASE_URL")
        if not self.base_url:
            raise SftmixError("eval.openai.base_url: backend openai needs the server's address, e.g. http://localhost:8000/v1 "
                              "(--base-url, or $SFTMIX_GENERATION_BASE_URL)")
        self.tokenizer = load_tokenizer(model_path)  # the run's tokenizer renders the chat template
        self.cfg = cfg
        self.progress = progress
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                                    max_retries=cfg.max_retries, timeout=cfg.timeout_s)
        self.served = self._served_model(cfg.served_model)
        self.identity = ("openai", self.served)

    def engine(self) -> dict:
        """The server's address and served model (its engine is the server's business)."""
        return {"backend": "openai", "engine": f"{self.base_url} ({self.served})", "dtype": None}

    def _fail(self, e: Exception) -> SftmixError:
        # imported here: openai is only needed when an OpenAI-compatible endpoint is called
        import openai

        if isinstance(e, openai.APIStatusError):
            body = getattr(e, "body", None)
            msg = body.get("message") if isinstance(body, dict) else None
            return SftmixError(f"generation server {self.base_url} answered HTTP {e.status_code}: {msg or e.message}")
        if isinstance(e, (openai.APIConnectionError, openai.APITimeoutError)):
            return SftmixError(f"generation server {self.base_url} is not reachable ({type(e).__name__}: {e}) after "
                               f"{self.cfg.max_retries} retries; is it running?")
        return SftmixError(f"generation server {self.base_url}: {type(e).__name__}: {e}")

    def _served_model(self, wanted: str | None) -> str:
        try:
            served = [m.id for m in self.client.models.list()]
        except Exception as e:  # noqa: BLE001 - every way a server can fail is said the same way
            raise self._fail(e) from None
        if wanted is None:
            if len(served) != 1:
                raise SftmixError(f"eval.openai.served_model: the server at {self.base_url} serves {', '.join(served) or 'no model'}; "
                                  "name the one to use (--served-model)")
            return served[0]
        if wanted not in served:
            raise SftmixError(f"eval.openai.served_model: the server at {self.base_url} does not serve {wanted!r}; it serves "
                              f"{', '.join(served) or 'no model'}")
        return wanted

    def _one(self, prompt: str, max_new_tokens: int, temperature: float, stop: list[str], seed: int) -> str:
        sampled = temperature > 1e-4
        r = self.client.completions.create(model=self.served, prompt=prompt, max_tokens=max_new_tokens,
                                           temperature=temperature if sampled else 0.0, top_p=1.0, stop=stop or None,
                                           seed=seed if sampled else None)
        if not r.choices or r.choices[0].text is None:
            raise SftmixError(f"generation server {self.base_url} returned no completion (response {r.id!r})")
        return r.choices[0].text

    def _answers(self, prompts, max_new_tokens, temperature, stop, seed, desc):
        # imported here: tqdm is only needed to show progress
        from tqdm.auto import tqdm

        pool = ThreadPoolExecutor(self.cfg.concurrency)
        bar = tqdm(total=len(prompts), desc=desc, disable=not self.progress)
        pending = {}
        nxt = 0
        try:
            while nxt < len(prompts) or pending:
                while nxt < len(prompts) and len(pending) < 2 * self.cfg.concurrency:  # bounded: no million futures at once
                    pending[pool.submit(self._one, prompts[nxt], max_new_tokens, temperature, stop, seed)] = nxt
                    nxt += 1
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    try:
                        text = fut.result()
                    except SftmixError:
                        raise
                    except Exception as e:  # noqa: BLE001
                        raise self._fail(e) from None
                    bar.update(1)
                    yield i, text
        finally:
            bar.close()
            pool.shutdown(wait=False, cancel_futures=True)


class ManagedServerGenerator(OpenAIGenerator):
    """Completions from a ``vllm serve`` of ``model_path`` that this generator starts and ``close`` stops."""

    name = "vllm_server"

    def __init__(self, model_path: str, cfg=None, dtype: str = "float32", log: Path | None = None, progress: bool = True):
        from sftmix.eval.engine import ManagedServer  # starts processes: only for this backend

        settings = cfg or VLLMServerConfig()
        self.dtype = settings.dtype or dtype
        self.server = ManagedServer(model_path, settings, self.dtype, Path(log or "vllm_server.log")).start()
        try:
            client = OpenAIBackendConfig(base_url=self.server.url, served_model=self.server.served_model(),
                                         concurrency=settings.concurrency, timeout_s=3600.0)
            super().__init__(model_path, client, progress)
            self.version = self.server.version()
        except BaseException:
            self.server.close()
            raise
        self.identity = ("vllm_server", self.dtype)

    def _fail(self, e: Exception) -> SftmixError:
        failed = super()._fail(e)
        if getattr(e, "status_code", None) is not None:  # it answered (an HTTP error): it is alive
            return failed
        # a server that stops answering mid-evaluation has most often died: say so, and why, from its log
        return SftmixError(f"{failed} ({self.server.failure()})")

    def engine(self) -> dict:
        """vLLM's server, with the version it reports."""
        return {"backend": "vllm_server", "engine": f"vllm {self.version or '(version not reported)'}", "dtype": self.dtype}

    def close(self) -> None:
        """Close the cache and stop the server."""
        super().close()
        self.server.close()


def make_generator(model_path: str, backend: str = "auto", batch_size: int = 8, progress: bool = True, dtype: str = "float32",
                   cfg=None, log_dir: Path | None = None) -> Generator:
    """The generator of ``backend`` (``cfg``: the eval config, for the vllm and server settings;
    ``log_dir``: where a managed server writes its log). ``auto`` picks vLLM when it is installed
    and a GPU is present, else Hugging Face."""
    if backend == "openai":
        return OpenAIGenerator(model_path, cfg.openai if cfg is not None else None, progress)
    if backend == "vllm_server":
        log = Path(log_dir or ".") / "vllm_server.log"
        return ManagedServerGenerator(model_path, cfg.vllm_server if cfg is not None else None, dtype, log, progress)
    if backend == "vllm" or (backend == "auto" and importlib.util.find_spec("vllm") is not None and _cuda()):
        return VLLMGenerator(model_path, cfg.vllm if cfg is not None else None, progress)
    return HFGenerator(model_path, batch_size=batch_size, dtype=dtype, progress=progress)


def transformers_version() -> str:
    """The installed transformers' version."""
    # imported here: transformers is heavy and only needed where a model is loaded
    import transformers

    return transformers.__version__


def _cuda() -> bool:
    # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
    import torch

    return torch.cuda.is_available()
