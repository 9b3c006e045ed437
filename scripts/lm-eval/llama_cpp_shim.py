#!/usr/bin/env python3
"""A minimal OpenAI `/v1/completions` endpoint backed by llama.cpp, for the llama.cpp side of
docs/lm-eval/README.md.

llama-server does not return prompt logprobs (`echo` with `logprobs`), which lm-evaluation-
harness's loglikelihood requests need. This server answers exactly those requests, with the
scores of `llama-loglik` (scripts/llama-loglik.cpp, one llama.cpp context, requests served one
at a time) in OpenAI's shape, so the same `lm_eval --model local-completions` command scores
llama.cpp and accellm.

Usage: llama_cpp_shim.py --tool PATH/llama-loglik --model MODEL.gguf [--port 8124] [--threads 2]

Handled: `prompt` as a string, token ids, or a list of either; `echo: true`; `logprobs` 0 or 1;
`max_tokens` 0 or 1 (the one token is the greedy one). Anything else is a 400. String prompts
are tokenized by llama.cpp (no BOS, as accellm does for this model); lm-eval sends token ids.
Standard library only.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Tool:
    """The llama-loglik process: one request line in, one JSON line out, one at a time."""

    def __init__(self, tool, model, threads):
        self.proc = subprocess.Popen(
            [tool, model, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lock = threading.Lock()

    def ask(self, line):
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError("llama-loglik exited")
        return json.loads(out)

    def tokenize(self, text):
        return self.ask("T " + text.encode("utf-8").hex()) if text else []

    def pieces(self, ids):
        hexes = self.ask("P " + " ".join(map(str, ids)))
        return [bytes.fromhex(h).decode("utf-8", errors="replace") for h in hexes]

    def score(self, ids):
        out = self.ask("S " + " ".join(map(str, ids)))
        if "error" in out:
            raise ValueError(out["error"])
        return out


class BadRequest(Exception):
    pass


def prompts_of(prompt):
    """The request's prompts, each a string or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(
        isinstance(p, str) or (isinstance(p, list) and all(isinstance(t, int) for t in p))
        for p in prompt
    ):
        return prompt
    raise BadRequest("prompt must be a string, token ids, or a list of either")


def choice(tool, index, prompt, max_tokens, top_n):
    ids = tool.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise BadRequest("empty prompt")
    scored = tool.score(ids)
    tokens = ids + ([scored["next"][0]] if max_tokens else [])
    lps = [None] + scored["lp"] + ([scored["next"][1]] if max_tokens else [])
    best = [None] + scored["top"] + ([scored["next"]] if max_tokens else [])
    wanted = sorted(set(tokens) | {b[0] for b in best if b})
    name_of = dict(zip(wanted, tool.pieces(wanted)))
    texts = [name_of[t] for t in tokens]
    offsets, at = [], 0
    for t in texts:
        offsets.append(at)
        at += len(t)
    tops = []
    for tok, lp, b in zip(tokens, lps, best):
        if lp is None:
            tops.append(None)
        elif top_n == 0:
            tops.append({name_of[tok]: lp})
        else:
            entry = {name_of[b[0]]: b[1]}
            entry[name_of[tok]] = max(lp, entry.get(name_of[tok], lp))
            tops.append(entry)
    result = {
        "index": index,
        "text": "".join(texts),
        "logprobs": {
            "tokens": texts,
            "token_logprobs": lps,
            "top_logprobs": tops,
            "text_offset": offsets,
        },
        "finish_reason": "length",
    }
    return result, len(ids), max_tokens


def make_handler(tool, model_name):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path in ("/v1/models", "/health"):
                self.reply(200, {"object": "list", "data": [
                    {"id": model_name, "object": "model", "owned_by": "llama.cpp"}]})
            else:
                self.reply(404, {"error": {"message": "not found"}})

        def do_POST(self):
            if self.path != "/v1/completions":
                self.reply(404, {"error": {"message": "not found"}})
                return
            try:
                req = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if not req.get("echo"):
                    raise BadRequest("only echo requests are served")
                max_tokens = req.get("max_tokens", 16)
                if max_tokens not in (0, 1):
                    raise BadRequest("max_tokens must be 0 or 1")
                top_n = req.get("logprobs") or 0
                if top_n not in (0, 1):
                    raise BadRequest("logprobs must be 0 or 1")
                choices, prompt_tokens, completion_tokens = [], 0, 0
                for i, p in enumerate(prompts_of(req.get("prompt"))):
                    c, n_prompt, n_done = choice(tool, i, p, max_tokens, top_n)
                    choices.append(c)
                    prompt_tokens += n_prompt
                    completion_tokens += n_done
            except (BadRequest, ValueError, TypeError, KeyError) as e:
                self.reply(400, {"error": {"message": str(e), "type": "invalid_request_error"}})
                return
            self.reply(200, {
                "id": f"cmpl-{time.monotonic_ns()}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            })

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=8124)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tool = Tool(args.tool, args.model, args.threads)
    name = os.path.splitext(os.path.basename(args.model))[0]
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(tool, name))
    # SIGTERM (scripts/lm-eval.sh stopping it) ends the tool too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        tool.proc.kill()
        tool.proc.wait()


if __name__ == "__main__":
    main()
