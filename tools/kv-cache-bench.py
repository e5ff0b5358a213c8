#!/usr/bin/env python3
"""Time to the next answer after a swap, with and without `kv_cache` (issue 21).

    tools/kv-cache-bench.py [--bin target/debug/modelyard] [--facts 40,120] [--rounds 3]

Runs the router (the binary given) in front of llama.cpp's real server
(tools/llama-server.py from .venv-real, SmolLM2-135M, 2 threads), two models on
one backend under a budget that holds one. For each conversation size: a first
turn on `a`, a request to `b` (which stops a's server), then the follow-up on `a`
— timed from sending it to its first streamed token, and to the end of its
answer. Legs alternate within each round (with, without, without, with, …), each
conversation is new (nothing from an earlier one can be in a cache). Prints a
Markdown table for docs/benchmarks.md and llama.cpp's own timings of the
follow-up (`cache_n` taken from cache, `prompt_n` evaluated).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_router(binary, workdir, kv):
    py = os.path.join(ROOT, ".venv-real/bin/python")
    script = os.path.join(ROOT, "tools/llama-server.py")
    kv_line = f", kv_cache: {{dir: {kv}}}" if kv else ""
    cfg = os.path.join(workdir, "routes.yaml")
    with open(cfg, "w") as f:
        f.write(
            "budget: 400MB\nqueue_timeout: 5m\nbackends:\n"
            f'  llama: {{command: ["{py}", "{script}", --model, smollm2, --port, "${{PORT}}", '
            f'--alias, "${{MODEL}}", --threads, "2", --ctx, "4096"], start_timeout: 60s{kv_line}}}\n'
            "models:\n  a: {backend: llama, memory: 250MB}\n  b: {backend: llama, memory: 250MB}\n"
        )
    env = dict(os.environ, MODELYARD_STATE_FILE=os.path.join(workdir, "state.json"),
               XDG_RUNTIME_DIR=workdir)
    p = subprocess.Popen([binary, "serve", "--config", cfg, "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in p.stdout:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return p, m.group(1)
    raise SystemExit("the router did not start")


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=600)


def chat(base, model, messages, max_tokens=16):
    """(seconds to first token, seconds to the end, text, llama.cpp's timings)."""
    t0 = time.monotonic()
    first, text, timings = None, "", {}
    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    with post(base + "/v1/chat/completions", body) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            timings = c.get("timings", timings)
            for ch in c.get("choices", []):
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    if first is None:
                        first = time.monotonic() - t0
                    text += piece
    return first or time.monotonic() - t0, time.monotonic() - t0, text, timings


def conversation(n_facts, salt):
    facts = "".join(f"Fact {i}: keeper {salt} counted {i * 7} ships. " for i in range(1, n_facts + 1))
    return [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": f"{facts}\nWhich fact mentions 70 ships?"}]


def leg(base, n_facts, salt):
    msgs = conversation(n_facts, salt)
    _, _, text, t1 = chat(base, "a", msgs)
    msgs += [{"role": "assistant", "content": text},
             {"role": "user", "content": "And which one mentions 140?"}]
    chat(base, "b", [{"role": "user", "content": "hi"}], 4)  # a's server stops
    ttft, total, _, t2 = chat(base, "a", msgs)
    if os.environ.get("KV_BENCH_DEBUG"):
        print(t2, file=sys.stderr)
    return ttft, total, t1.get("prompt_n"), t2.get("cache_n"), t2.get("prompt_n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_bin = os.path.join(ROOT, "target/release/modelyard")
    if not os.path.exists(default_bin):
        default_bin = os.path.join(ROOT, "target/debug/modelyard")
    ap.add_argument("--bin", default=default_bin)
    ap.add_argument("--facts", default="40,120", help="conversation sizes, in facts of ~14 tokens")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.facts.split(",")]

    work = tempfile.mkdtemp(prefix="kv-bench-")
    routers = {}
    try:
        for mode in ("with", "without"):
            d = os.path.join(work, mode)
            os.makedirs(d)
            kv = os.path.join(d, "kv") if mode == "with" else None
            routers[mode] = start_router(args.bin, d, kv)
        results = {}
        salt = 0
        for r in range(args.rounds):
            order = ("with", "without") if r % 2 == 0 else ("without", "with")
            for n in sizes:
                for mode in order:
                    salt += 1
                    out = leg(routers[mode][1], n, f"r{salt}")
                    results.setdefault((n, mode), []).append(out)
                    print(f"round {r + 1} facts {n} {mode}: ttft {out[0]:.2f}s total {out[1]:.2f}s "
                          f"first prompt {out[2]} follow-up cache_n {out[3]} prompt_n {out[4]}",
                          file=sys.stderr, flush=True)
        print("| conversation | follow-up after a swap | time to first token | time to answer | cache_n / prompt_n |")
        print("|---|---|---|---|---|")
        for n in sizes:
            for mode in ("without", "with"):
                rs = results[(n, mode)]
                med = lambda i: statistics.median(x[i] for x in rs)  # noqa: E731
                spread = lambda i: f"{min(x[i] for x in rs):.2f}…{max(x[i] for x in rs):.2f}"  # noqa: E731
                tokens = (rs[0][3] or 0) + (rs[0][4] or 0)
                label = "with `kv_cache`" if mode == "with" else "without"
                print(f"| {tokens} tokens | {label} | {med(0):.2f} s [{spread(0)}] | {med(1):.2f} s [{spread(1)}] "
                      f"| {rs[0][3]} / {rs[0][4]} |")
    finally:
        for p, _ in routers.values():
            p.terminate()
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
