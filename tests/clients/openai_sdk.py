"""The official OpenAI Python SDK against the router, unmodified but for base_url.

    python openai_sdk.py ROUTER_URL

Expects the router of tests/clients.rs (simulated backends): `qwen3-chat` (aliases
`default`, `chat`, upstream name `Qwen3-30B`), `embed-small` (alias `embed`),
`slowpoke` (never ready), `dead` (exits at start). Prints one line per check and
exits non-zero on the first failure.
"""

import sys

import openai

URL = sys.argv[1].rstrip("/") + "/v1"
# No retries: the SDK retries 5xx and 409 twice by default, which would hide what
# the router answered the first time (and wait out its Retry-After).
client = openai.OpenAI(base_url=URL, api_key="unused", max_retries=0, timeout=30)
MSG = [{"role": "user", "content": "hello there"}]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}" + (f": {detail}" if detail else ""), flush=True)


def expect(exc_type, name, call):
    try:
        got = call()
    except exc_type as e:
        return e
    except Exception as e:  # the wrong exception is a failure, with what it was
        check(name, False, f"expected {exc_type.__name__}, got {type(e).__name__}: {e}")
    check(name, False, f"expected {exc_type.__name__}, got a success: {got!r}")


# models.list: every model and alias the router reports, with its own fields.
models = client.models.list()
ids = sorted(m.id for m in models.data)
check(
    "models.list",
    ids == sorted(["qwen3-chat", "default", "chat", "embed-small", "embed", "slowpoke", "dead"]),
    ids,
)
by_id = {m.id: m for m in models.data}
check(
    "models.list alias fields",
    getattr(by_id["chat"], "alias_for", None) == "qwen3-chat"
    and getattr(by_id["qwen3-chat"], "aliases", None) == ["default", "chat"],
    by_id["chat"].model_dump(),
)
check("models.list owned_by", by_id["qwen3-chat"].owned_by == "modelyard/sim", by_id["qwen3-chat"].owned_by)

# models.retrieve, by model and by alias.
m = client.models.retrieve("qwen3-chat")
check("models.retrieve model", m.id == "qwen3-chat" and m.object == "model", m.model_dump())
a = client.models.retrieve("default")
check("models.retrieve alias", a.id == "default" and getattr(a, "alias_for", None) == "qwen3-chat", a.model_dump())
e = expect(openai.NotFoundError, "models.retrieve unknown", lambda: client.models.retrieve("nope"))
check("models.retrieve unknown", e.status_code == 404, e.message)

# Chat, non-streamed, by alias: the reply names the model as asked, not `Qwen3-30B`.
r = client.chat.completions.create(model="default", messages=MSG, max_tokens=8)
text = r.choices[0].message.content
check("chat", bool(text) and r.model == "default", f"model={r.model} content={text!r}")
check("chat usage", r.usage is not None and r.usage.completion_tokens > 0, r.usage)

# Chat, streamed: chunks joined, every chunk named as asked.
stream = client.chat.completions.create(
    model="chat", messages=MSG, stream=True, stream_options={"include_usage": True}
)
chunks = list(stream)
joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
names = {c.model for c in chunks}
usage = [c.usage for c in chunks if c.usage]
check("chat stream", len(chunks) > 2 and joined and names == {"chat"}, f"{len(chunks)} chunks, models {names}, {joined!r}")
check("chat stream usage", len(usage) == 1 and usage[0].completion_tokens > 0, usage)

# The SDK's streaming helper on top of the same stream.
with client.chat.completions.stream(model="qwen3-chat", messages=MSG) as s:
    final = s.get_final_completion()
check(
    "chat stream helper",
    final.model == "qwen3-chat" and bool(final.choices[0].message.content),
    final.choices[0].message.content,
)

# The Responses API, plain and streamed: the answer named as asked.
resp = client.responses.create(model="default", input="Say hi", max_output_tokens=8)
check("responses", bool(resp.output_text) and resp.model == "default", f"model={resp.model} text={resp.output_text!r}")
events = list(client.responses.create(model="chat", input="Say hi", stream=True))
deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
done = events[-1]
check(
    "responses stream",
    done.type == "response.completed" and done.response.model == "chat" and deltas == done.response.output_text,
    f"{len(events)} events, last {done.type}, {deltas!r}",
)

# Embeddings (the SDK asks for base64 unless told; floats come back either way).
emb = client.embeddings.create(model="embed", input=["one", "two"], dimensions=16)
lens = [len(d.embedding) for d in emb.data]
check("embeddings", lens == [16, 16] and emb.model == "embed", f"lengths {lens}, model {emb.model}")
emb = client.embeddings.create(model="embed-small", input="one", encoding_format="float")
check("embeddings float", len(emb.data[0].embedding) == 8, len(emb.data[0].embedding))

# Errors, as the SDK's own exception classes.
e = expect(
    openai.NotFoundError,
    "unknown model",
    lambda: client.chat.completions.create(model="qwen3-chta", messages=MSG),
)
check(
    "unknown model",
    e.status_code == 404 and "qwen3-chta" in e.message and "qwen3-chat" in e.message
    and e.code == "model_not_found" and e.param == "model",
    e.message,
)
e = expect(
    openai.BadRequestError,
    "model not a string",
    lambda: client.chat.completions.create(model=42, messages=MSG),
)
check("model not a string", e.status_code == 400 and e.code == "invalid_model", e.message)
e = expect(
    openai.BadRequestError,
    "no model",
    lambda: client.post("/chat/completions", cast_to=object, body={"messages": MSG}),
)
check("no model", e.status_code == 400 and e.code == "missing_model", e.message)
e = expect(
    openai.InternalServerError,
    "model not ready",
    lambda: client.chat.completions.create(model="slowpoke", messages=MSG),
)
check(
    "model not ready",
    e.status_code == 503 and e.code == "model_not_ready" and "slowpoke" in e.message
    and e.response.headers.get("retry-after") is not None,
    e.message,
)
e = expect(
    openai.InternalServerError,
    "backend fails to start",
    lambda: client.chat.completions.create(model="dead", messages=MSG),
)
check(
    "backend fails to start",
    e.status_code == 502 and e.code == "backend_start_failed" and "dead" in e.message,
    e.message,
)

print("all openai sdk checks passed", flush=True)
