"""An exact-match benchmark over a small JSONL file: what a user writes to add an ability to
sftmix without editing it (``eval: {tasks: [usertasks.exact:arithmetic]}``)."""

import json
from pathlib import Path

from sftmix.eval.tasks import HIGHER, Context, Task
from sftmix.templates import generation_prompt

DATA = Path(__file__).with_name("arithmetic.jsonl")


def _run(ctx: Context):
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    prompts = [generation_prompt([{"role": "user", "content": r["question"]}], ctx.template, ctx.generator.tokenizer) for r in rows]
    outs = ctx.generator.generate(prompts, max_new_tokens=6, temperature=0.0, desc="arithmetic")
    scored = [{"item": r["id"], "prompt": p, "output": o, "answer": r["answer"],
               "accuracy": 100.0 * (o.strip().split()[:1] == [r["answer"]])} for r, p, o in zip(rows, prompts, outs)]
    return {"accuracy": sum(s["accuracy"] for s in scored) / len(scored), "n": len(scored)}, scored


arithmetic = Task("arithmetic", _run, {"accuracy": HIGHER}, ability="math", binary=True,
                  description="exact match of the first word of the reply with the answer")


def _malformed(ctx: Context):
    return {"accuracy": 0.0}, [{"item": "q1", "acc": 1.0}]  # no value for its metric


malformed = Task("malformed", _malformed, {"accuracy": HIGHER}, generates=False)

not_a_task = "a string"
