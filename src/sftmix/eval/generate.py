"""Generation backends with one interface: ``generate(prompts, max_new_tokens, temperature, stop)``.

- ``HFGenerator``: batched ``model.generate`` with left padding. Prompts are sorted by length so
  that each batch pads little, then answers are returned in the input order. Greedy batched output
  equals batch-1 output (a test checks this on the tiny model in fp32).
- ``VLLMGenerator``: used when vLLM is installed (GPU machines); same interface.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

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


class HFGenerator:
    """Batched Hugging Face generation."""

    name = "hf"

    def __init__(self, model_path: str, batch_size: int = 8, dtype: str = "float32", progress: bool = True):
        import torch

        self.tokenizer = load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        self.model = load_model(model_path, dtype)
        self.model.eval()
        self.batch_size = batch_size
        self.progress = progress
        self.torch = torch

    def generate(self, prompts: list[str], max_new_tokens: int = 512, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, desc: str = "generating") -> list[str]:
        torch = self.torch
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[str | None] = [None] * len(prompts)
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in track(batches, desc, enabled=self.progress):
            enc = self.tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=True)
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
                text = self.tokenizer.decode(new[j], skip_special_tokens=True)
                out[i] = cut_at_stop(text, stop)
        return out  # type: ignore[return-value]


class VLLMGenerator:
    """vLLM generation (GPU). Same interface as ``HFGenerator``."""

    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "bfloat16", **_):
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], max_new_tokens: int = 512, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, desc: str = "generating") -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if temperature > 1e-4 else 0.0,
                                stop=list(stop) or None, seed=seed)
        outs = self.llm.generate(prompts, params)
        return [o.outputs[0].text for o in outs]


def make_generator(model_path: str, backend: str = "auto", batch_size: int = 8, progress: bool = True, dtype: str = "float32"):
    """``auto`` picks vLLM when it is installed and a GPU is present, else Hugging Face."""
    if backend == "vllm" or (backend == "auto" and importlib.util.find_spec("vllm") is not None and _cuda()):
        return VLLMGenerator(model_path)
    return HFGenerator(model_path, batch_size=batch_size, dtype=dtype, progress=progress)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
