"""Serve a local Hugging Face model as an OpenAI-compatible chat endpoint on the loopback.

For trying MT-Bench end to end without an API: the judge is a real (small) model, so its scores
mean little and it often misses the ``[[N]]`` format (sftmix counts those as failed judgments).
Compare nothing against the paper's GPT-4 numbers with it.

    python benchmarks/local_judge.py --model smollm2 --port 8321 --max-tokens 256
    OPENAI_API_KEY=local sftmix eval smollm2 --tasks mtbench --judge-base-url http://127.0.0.1:8321/v1 --judge-model smollm2
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sftmix.eval.generate import HFGenerator
from sftmix.models import resolve_model

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="smollm2")
ap.add_argument("--port", type=int, default=8321)
ap.add_argument("--max-tokens", type=int, default=256, help="cap on generated tokens per request")
args = ap.parse_args()
gen = HFGenerator(resolve_model(args.model), batch_size=1, progress=False)
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = gen.tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        with lock:
            text = gen.generate([prompt], max_new_tokens=min(args.max_tokens, body.get("max_tokens") or args.max_tokens),
                                temperature=body.get("temperature") or 0.0)[0]
        data = json.dumps({"id": f"local-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                           "model": body.get("model", args.model),
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


print(f"serving {args.model} on http://127.0.0.1:{args.port}/v1", flush=True)
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
