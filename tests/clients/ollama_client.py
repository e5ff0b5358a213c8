"""The official `ollama` Python library (pip ollama==0.6.3) against the router.

Usage: ollama_client.py ROUTER_URL CHAT_MODEL EMBED_MODEL
Prints one line per check; exits non-zero (with the traceback) on the first failure.
"""

import sys

import ollama

url, chat_model, embed_model = sys.argv[1:4]
client = ollama.Client(host=url)


def check(name, ok, detail=""):
    if not ok:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok {name}")


listed = client.list()
names = [m.model for m in listed.models]
check("list names the models", chat_model in names and embed_model in names, names)
check("list has digests and sizes", all(m.digest and m.size is not None for m in listed.models), listed)

reply = client.chat(model=chat_model, messages=[{"role": "user", "content": "hello there"}])
check("chat answers", reply.message.role == "assistant" and reply.message.content, reply)
check("chat is done", reply.done and reply.done_reason == "stop", reply)
check("chat names the model as asked", reply.model == chat_model, reply.model)
check("chat counts tokens", reply.eval_count and reply.prompt_eval_count, reply)
check("chat times in ns", reply.total_duration and reply.total_duration > 0, reply)

chunks = list(
    client.chat(
        model=chat_model,
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        options={"temperature": 0.1, "num_predict": 3},
        keep_alive="10m",
    )
)
text = "".join(c.message.content for c in chunks)
check("streamed chat has several chunks", len(chunks) >= 3, chunks)
check("streamed chat ends done", chunks[-1].done and not any(c.done for c in chunks[:-1]), chunks)
check("num_predict limits the tokens", chunks[-1].eval_count == 3 and chunks[-1].done_reason == "length", chunks[-1])
check("streamed text is the tokens", text == "t0 t1 t2 ", repr(text))

gen = client.generate(model=chat_model, prompt="why is the sky blue?", system="be brief")
check("generate answers", gen.response and gen.done, gen)

loaded = client.generate(model=chat_model)
check("generate without a prompt loads", loaded.done_reason == "load", loaded)

emb = client.embed(model=embed_model, input=["first text", "second text"])
check("embed returns one vector per input", len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 0, emb)
single = client.embed(model=embed_model, input="first text")
check("embed of a string", single.embeddings[0] == emb.embeddings[0], single)
legacy = client.embeddings(model=embed_model, prompt="first text")
check("embeddings (legacy) agrees", list(legacy.embedding) == list(emb.embeddings[0]), legacy)

ps = client.ps()
running = [m.model for m in ps.models]
check("ps lists the loaded models", chat_model in running, running)
check("ps has expiry", all(m.expires_at is not None for m in ps.models), ps)

shown = client.show(chat_model)
check("show has capabilities", "completion" in (shown.capabilities or []), shown)

try:
    client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    check("unknown model raises", False, "no error")
except ollama.ResponseError as e:
    check("unknown model is a 404 ResponseError", e.status_code == 404 and "not found" in e.error, (e.status_code, e.error))

try:
    client.show("no-such-model")
    check("show of an unknown model raises", False, "no error")
except ollama.ResponseError as e:
    check("show of an unknown model is a 404", e.status_code == 404, e)

print("all ok")
