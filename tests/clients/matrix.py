"""The client matrix: real, unmodified Python clients against the router, each
pointed at it by its base URL only. Pins: tools/test (.venv-clients).

    python matrix.py ROUTER_URL

Expects the router of tests/clients.rs: `qwen3-chat` (aliases `default`, `chat`),
`embed-small` (alias `embed`), `slowpoke` (never ready), all on modelyard-sim, with
`progress_after` short enough that a stream to `slowpoke` is committed before it fails.
Each client does what it can of: list models, chat, stream, a tool-call round
trip (an agent loop's two turns), JSON mode, embeddings, and an error it can act
on. Prints one line per check; exits non-zero on the first failure.
"""

import asyncio
import json
import os
import sys
import time

# litellm fetches a price list from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pydantic import BaseModel

URL = sys.argv[1].rstrip("/")
V1 = URL + "/v1"
MSG = [{"role": "user", "content": "what is the weather in Oslo?"}]
CHAT, EMBED = "qwen3-chat", "embed"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER_SCHEMA},
}


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


def get_weather(city: str, days: int) -> str:
    """The weather in a city.

    Args:
        city: the city
        days: how many days ahead
    """
    return f"rain in {city} for {days} days"


current = "?"
started = time.monotonic()


def client(name):
    global current, started
    if current != "?":
        print(f"    ({time.monotonic() - started:.1f}s)", flush=True)
    current = name
    started = time.monotonic()
    print(f"--- {name}", flush=True)


def check(name, ok, detail=""):
    if not ok:
        print(f"FAIL {current} {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {current} {name}", flush=True)


def raises(exc_type, name, call):
    try:
        got = call()
    except exc_type as e:
        return e
    except Exception as e:
        check(name, False, f"expected {exc_type.__name__}, got {type(e).__name__}: {e}")
    check(name, False, f"expected {exc_type.__name__}, got a success: {got!r}")


def arguments_follow_schema(args):
    return isinstance(args, dict) and isinstance(args.get("city"), str) and isinstance(args.get("days"), int)


# ---------------------------------------------------------------- openai
import openai

client("openai " + openai.__version__)
oa = openai.OpenAI(base_url=V1, api_key="unused", max_retries=0, timeout=30)
ids = {m.id for m in oa.models.list().data}
check("models.list", {CHAT, EMBED, "embed-small"} <= ids, ids)
r = oa.chat.completions.create(model=CHAT, messages=MSG, max_tokens=8)
check("chat", bool(r.choices[0].message.content), r)
text = "".join(c.choices[0].delta.content or "" for c in oa.chat.completions.create(model=CHAT, messages=MSG, stream=True) if c.choices)
check("stream", bool(text), text)
first = oa.chat.completions.create(model=CHAT, messages=MSG, tools=[TOOL])
call = first.choices[0].message.tool_calls[0]
args = json.loads(call.function.arguments)
check("tool call follows the schema", call.function.name == "get_weather" and arguments_follow_schema(args), args)
turn = MSG + [first.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": get_weather(**args)}]
second = oa.chat.completions.create(model=CHAT, messages=turn, tools=[TOOL])
check("tool result answered", second.choices[0].finish_reason == "stop" and second.choices[0].message.content, second)
parsed = oa.chat.completions.parse(model=CHAT, messages=MSG, response_format=Person).choices[0].message.parsed
check("structured output (json_schema)", isinstance(parsed, Person), parsed)
r = oa.chat.completions.create(model=CHAT, messages=MSG, response_format={"type": "json_object"})
check("json_object", isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content)
resp = oa.responses.create(model=CHAT, input="hi", max_output_tokens=8)
check("responses", resp.output_text and resp.model == CHAT, resp)
events = list(oa.responses.create(model=CHAT, input="hi", stream=True))
check("responses stream", events[-1].type == "response.completed", events[-1].type)


async def twenty():
    aclient = openai.AsyncOpenAI(base_url=V1, api_key="unused", max_retries=0, timeout=30)
    replies = await asyncio.gather(*(aclient.chat.completions.create(model=CHAT, messages=MSG) for _ in range(20)))
    await aclient.close()
    return replies


replies = asyncio.run(twenty())
check("async x20", len({r.id for r in replies}) == 20 and all(r.choices[0].message.content for r in replies),
      [r.id for r in replies])
emb = oa.embeddings.create(model=EMBED, input=["a", "b"])
check("embeddings (base64, the SDK's default)", len(emb.data) == 2 and any(x != 0 for x in emb.data[0].embedding), emb.data[0].embedding[:4])
e = raises(openai.NotFoundError, "unknown model", lambda: oa.chat.completions.create(model="qwen3-chta", messages=MSG))
check("unknown model: 404 naming the model it meant", "qwen3-chat" in e.message and e.code == "model_not_found", e.message)


def drain(stream):
    for _ in stream:
        pass


# The router committed a 200 and progress (progress_after: 200ms) before the model
# failed to load: the SDK must still raise, with the router's message.
e = raises(openai.APIError, "failure after the stream began",
           lambda: drain(oa.chat.completions.create(model="slowpoke", messages=MSG, stream=True)))
check("failure after the stream began raises", "slowpoke" in e.message, e.message)

# ---------------------------------------------------------------- anthropic
import anthropic

client("anthropic " + anthropic.__version__)
an = anthropic.Anthropic(base_url=URL, api_key="unused", max_retries=0, timeout=30)
ids = {m.id for m in an.models.list().data}
check("models.list", CHAT in ids, ids)
m = an.messages.create(model=CHAT, max_tokens=64, messages=MSG)
check("messages", m.content[0].type == "text" and m.content[0].text and m.stop_reason == "end_turn", m)
with an.messages.stream(model=CHAT, max_tokens=64, messages=MSG) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
check("stream", text and text == final.content[0].text, text)
tools = [{"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER_SCHEMA}]
first = an.messages.create(model=CHAT, max_tokens=64, messages=MSG, tools=tools)
use = next(b for b in first.content if b.type == "tool_use")
check("tool_use follows the schema", first.stop_reason == "tool_use" and arguments_follow_schema(use.input), use)
turn = MSG + [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": get_weather(**use.input)}]}]
second = an.messages.create(model=CHAT, max_tokens=64, messages=turn, tools=tools)
check("tool result answered", second.stop_reason == "end_turn" and second.content[0].type == "text", second)
with an.messages.stream(model=CHAT, max_tokens=64, messages=MSG, tools=tools) as s:
    final = s.get_final_message()
check("streamed tool_use", final.content[0].type == "tool_use" and arguments_follow_schema(final.content[0].input), final)
n = an.messages.count_tokens(model=CHAT, messages=MSG)
check("count_tokens", n.input_tokens == 6, n)
e = raises(anthropic.APIStatusError, "failure after the stream began",
           lambda: drain(an.messages.stream(model="slowpoke", max_tokens=8, messages=MSG).__enter__()))
check("failure after the stream began: event: error, Anthropic's shape",
      e.body["type"] == "error" and "slowpoke" in e.body["error"]["message"], e.body)
e = raises(anthropic.NotFoundError, "unknown model", lambda: an.messages.create(model="qwen3-chta", max_tokens=8, messages=MSG))
check("unknown model: Anthropic's error shape", e.body["type"] == "error" and e.body["error"]["type"] == "not_found_error", e.body)

# ---------------------------------------------------------------- instructor
import instructor

client("instructor " + instructor.__version__)
# Mode.JSON: the schema only in the prompt, json_object asked.
for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA, instructor.Mode.JSON):
    ic = instructor.from_openai(openai.OpenAI(base_url=V1, api_key="unused", max_retries=0), mode=mode)
    p = ic.chat.completions.create(model=CHAT, messages=MSG, response_model=Person, max_retries=0)
    check(f"response_model in {mode.value}", isinstance(p, Person) and p.tags, p)
ic = instructor.from_openai(openai.OpenAI(base_url=V1, api_key="unused", max_retries=0))
partials = list(ic.chat.completions.create_partial(model=CHAT, messages=MSG, response_model=Person, max_retries=0))
check("streamed partial model", partials and partials[-1].name == "sim", partials[-1:])
e = raises(Exception, "unknown model", lambda: ic.chat.completions.create(model="nope", messages=MSG, response_model=Person, max_retries=0))
cause = e
while cause is not None and not isinstance(cause, openai.NotFoundError):
    cause = cause.__cause__ or cause.__context__
check("unknown model: the SDK's NotFoundError underneath", cause is not None, repr(e))

# ---------------------------------------------------------------- langchain-openai
from importlib.metadata import version

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

client("langchain-openai " + version("langchain-openai"))
lc = ChatOpenAI(model=CHAT, base_url=V1, api_key="unused", max_retries=0, timeout=30)
check("invoke", lc.invoke("hello").content, "")
check("stream", "".join(c.content for c in lc.stream("hello")), "")
bound = lc.bind_tools([get_weather])
ai = bound.invoke([HumanMessage(MSG[0]["content"])])
check("tool call follows the schema", ai.tool_calls and arguments_follow_schema(ai.tool_calls[0]["args"]), ai.tool_calls)
call = ai.tool_calls[0]
answer = bound.invoke([HumanMessage(MSG[0]["content"]), ai, ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])])
check("tool result answered", answer.content and not answer.tool_calls, answer)
p = lc.with_structured_output(Person).invoke("who?")
check("with_structured_output (json_schema)", isinstance(p, Person), p)
p = lc.with_structured_output(Person, method="function_calling").invoke("who?")
check("with_structured_output (function_calling)", isinstance(p, Person), p)
vectors = OpenAIEmbeddings(model=EMBED, base_url=V1, api_key="unused", check_embedding_ctx_length=False).embed_documents(["a", "b"])
check("embeddings", len(vectors) == 2 and len(vectors[0]) > 0, len(vectors))
raises(openai.NotFoundError, "unknown model: the SDK's NotFoundError", lambda: ChatOpenAI(model="nope", base_url=V1, api_key="unused", max_retries=0).invoke("hi"))

# ---------------------------------------------------------------- langchain-ollama
import ollama
from langchain_ollama import ChatOllama, OllamaEmbeddings

client("langchain-ollama " + version("langchain-ollama"))
lo = ChatOllama(model=CHAT, base_url=URL)
check("invoke", lo.invoke("hello").content, "")
check("stream", "".join(c.content for c in lo.stream("hello")), "")
bound = lo.bind_tools([get_weather])
ai = bound.invoke([HumanMessage(MSG[0]["content"])])
check("tool call follows the schema", ai.tool_calls and arguments_follow_schema(ai.tool_calls[0]["args"]), ai.tool_calls)
call = ai.tool_calls[0]
answer = bound.invoke([HumanMessage(MSG[0]["content"]), ai, ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])])
check("tool result answered (second turn)", answer.content and not answer.tool_calls, answer)
p = lo.with_structured_output(Person).invoke("who?")
check("with_structured_output (format: schema)", isinstance(p, Person), p)
vectors = OllamaEmbeddings(model=EMBED, base_url=URL).embed_documents(["a", "b"])
check("embeddings", len(vectors) == 2 and len(vectors[0]) > 0, len(vectors))
e = raises(ollama.ResponseError, "unknown model", lambda: ChatOllama(model="nope", base_url=URL).invoke("hi"))
check("unknown model: 404", e.status_code == 404, e)

# ---------------------------------------------------------------- ollama
client("ollama " + version("ollama"))
ol = ollama.Client(host=URL)
names = [m.model for m in ol.list().models]
check("list", CHAT in names and "embed-small" in names, names)
shown = ol.show("embed-small")
check("show: the embedding model says embedding", "embedding" in (shown.capabilities or []), shown.capabilities)
check("chat", ol.chat(model=CHAT, messages=MSG).message.content, "")
check("stream", "".join(c.message.content for c in ol.chat(model=CHAT, messages=MSG, stream=True)), "")
r = ol.chat(model=CHAT, messages=MSG, think=True)
check("think: the reasoning comes back as thinking", r.message.thinking and r.message.content, r.message)
thought = "".join(c.message.thinking or "" for c in ol.chat(model=CHAT, messages=MSG, think="high", stream=True))
check("think, streamed", thought == r.message.thinking, thought)
check("think=False: none", not ol.chat(model=CHAT, messages=MSG, think=False).message.thinking, "")
messages = list(MSG)
first = ol.chat(model=CHAT, messages=messages, tools=[get_weather])
calls = first.message.tool_calls or []
check("tool call follows the schema", calls and arguments_follow_schema(dict(calls[0].function.arguments)), first.message)
messages += [first.message, {"role": "tool", "tool_name": calls[0].function.name,
                             "content": get_weather(**calls[0].function.arguments)}]
second = ol.chat(model=CHAT, messages=messages, tools=[get_weather])
check("tool result answered (second turn)", second.message.content and not second.message.tool_calls, second.message)
r = ol.chat(model=CHAT, messages=MSG, format=Person.model_json_schema())
check("format: schema", Person.model_validate_json(r.message.content), r.message.content)
r = ol.generate(model=CHAT, prompt="json please", format="json")
check("format: json", isinstance(json.loads(r.response), dict), r.response)
emb = ol.embed(model=EMBED, input=["a", "b"])
check("embed", len(emb.embeddings) == 2, emb)
e = raises(ollama.ResponseError, "unknown model", lambda: ol.chat(model="nope", messages=MSG))
check("unknown model: 404 with a message", e.status_code == 404 and "nope" in e.error, e.error)

# ---------------------------------------------------------------- llama-index
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

client("llama-index-llms-openai-like " + version("llama-index-llms-openai-like"))
li = OpenAILike(model=CHAT, api_base=V1, api_key="unused", is_chat_model=True,
                is_function_calling_model=True, max_retries=0, timeout=30)
check("chat", li.chat([ChatMessage(role="user", content="hello")]).message.content, "")
check("stream_chat", "".join(r.delta or "" for r in li.stream_chat([ChatMessage(role="user", content="hello")])), "")
check("complete", li.complete("hello").text, "")
tool = FunctionTool.from_defaults(fn=get_weather)
history = [ChatMessage(role="user", content=MSG[0]["content"])]
r = li.chat_with_tools([tool], chat_history=history)
calls = li.get_tool_calls_from_response(r, error_on_no_tool_call=False)
check("tool call follows the schema", calls and arguments_follow_schema(calls[0].tool_kwargs), calls)
history += [r.message, ChatMessage(role="tool", content=get_weather(**calls[0].tool_kwargs),
                                   additional_kwargs={"tool_call_id": calls[0].tool_id, "name": calls[0].tool_name})]
r = li.chat_with_tools([tool], chat_history=history)
check("tool result answered", r.message.content and not li.get_tool_calls_from_response(r, error_on_no_tool_call=False), r)
p = li.structured_predict(Person, __import__("llama_index.core.prompts", fromlist=["PromptTemplate"]).PromptTemplate("who is {x}?"), x="sim")
check("structured_predict (tool calling)", isinstance(p, Person), p)
raises(openai.NotFoundError, "unknown model: the SDK's NotFoundError",
       lambda: OpenAILike(model="nope", api_base=V1, api_key="unused", is_chat_model=True, max_retries=0).chat([ChatMessage(role="user", content="hi")]))

# ---------------------------------------------------------------- litellm
import litellm

client("litellm " + version("litellm"))
kw = {"api_base": V1, "api_key": "unused"}
r = litellm.completion(model="openai/" + CHAT, messages=MSG, **kw)
check("completion", r.choices[0].message.content, r)
text = "".join(c.choices[0].delta.content or "" for c in litellm.completion(model="openai/" + CHAT, messages=MSG, stream=True, **kw))
check("stream", text, text)
first = litellm.completion(model="openai/" + CHAT, messages=MSG, tools=[TOOL], **kw)
call = first.choices[0].message.tool_calls[0]
args = json.loads(call.function.arguments)
check("tool call follows the schema", arguments_follow_schema(args), args)
turn = MSG + [first.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": get_weather(**args)}]
second = litellm.completion(model="openai/" + CHAT, messages=turn, tools=[TOOL], **kw)
check("tool result answered", second.choices[0].message.content and not second.choices[0].message.tool_calls, second)
r = litellm.completion(model="openai/" + CHAT, messages=MSG, response_format=Person, **kw)
check("response_format (pydantic)", Person.model_validate_json(r.choices[0].message.content), r.choices[0].message.content)
emb = litellm.embedding(model="openai/" + EMBED, input=["a", "b"], **kw)
check("embedding", len(emb.data) == 2, emb)
e = raises(litellm.NotFoundError, "unknown model", lambda: litellm.completion(model="openai/nope", messages=MSG, num_retries=0, **kw))
check("unknown model: litellm's NotFoundError", e.status_code == 404, e)
e = raises(litellm.ServiceUnavailableError, "model not ready",
           lambda: litellm.completion(model="openai/slowpoke", messages=MSG, num_retries=0, **kw))
check("model not ready: 503 (retryable)", e.status_code == 503, e)

client("done")
print("all client matrix checks passed", flush=True)
