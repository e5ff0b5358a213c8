// The client matrix, Node side: npm `openai` and `ollama` against the router,
// unmodified but for their base URL. Pins: tools/test (.venv-node; NODE_PATH
// points there).
//
//     node matrix.cjs ROUTER_URL
//
// Expects the router of tests/clients.rs. Prints one line per check; exits
// non-zero on the first failure.

const { OpenAI, NotFoundError } = require("openai");
const { Ollama } = require("ollama");

const URL = process.argv[2].replace(/\/$/, "");
const CHAT = "qwen3-chat";
const EMBED = "embed";
const MSG = [{ role: "user", content: "what is the weather in Oslo?" }];
const SCHEMA = {
  type: "object",
  properties: { city: { type: "string" }, days: { type: "integer" } },
  required: ["city", "days"],
};
const TOOL = { type: "function", function: { name: "get_weather", parameters: SCHEMA } };

const version = (pkg) =>
  JSON.parse(require("fs").readFileSync(require("path").join(process.env.NODE_PATH, pkg, "package.json"))).version;

let current = "?";
function check(name, ok, detail) {
  if (!ok) {
    console.log(`FAIL ${current} ${name}: ${JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok   ${current} ${name}`);
}
const followsSchema = (a) => a && typeof a.city === "string" && Number.isInteger(a.days);
async function rejects(name, call) {
  try {
    const got = await call();
    check(name, false, `a success: ${JSON.stringify(got)}`);
  } catch (e) {
    return e;
  }
}

async function openaiChecks() {
  current = "npm openai " + version("openai");
  console.log(`--- ${current}`);
  const oa = new OpenAI({ baseURL: URL + "/v1", apiKey: "unused", maxRetries: 0, timeout: 30000 });
  const ids = [];
  for await (const m of oa.models.list()) ids.push(m.id);
  check("models.list", ids.includes(CHAT) && ids.includes(EMBED), ids);
  const r = await oa.chat.completions.create({ model: CHAT, messages: MSG, max_tokens: 8 });
  check("chat", r.choices[0].message.content, r);
  let text = "";
  for await (const c of await oa.chat.completions.create({ model: CHAT, messages: MSG, stream: true })) {
    text += c.choices[0]?.delta?.content ?? "";
  }
  check("stream", text, text);
  const first = await oa.chat.completions.create({ model: CHAT, messages: MSG, tools: [TOOL] });
  const call = first.choices[0].message.tool_calls[0];
  const args = JSON.parse(call.function.arguments);
  check("tool call follows the schema", followsSchema(args), args);
  const second = await oa.chat.completions.create({
    model: CHAT,
    tools: [TOOL],
    messages: [...MSG, first.choices[0].message, { role: "tool", tool_call_id: call.id, content: "rain" }],
  });
  check("tool result answered", second.choices[0].message.content && second.choices[0].finish_reason === "stop", second);
  const j = await oa.chat.completions.create({
    model: CHAT,
    messages: MSG,
    response_format: { type: "json_schema", json_schema: { name: "weather", schema: SCHEMA } },
  });
  check("json_schema", followsSchema(JSON.parse(j.choices[0].message.content)), j.choices[0].message.content);
  const resp = await oa.responses.create({ model: CHAT, input: "hi", max_output_tokens: 8 });
  check("responses", resp.output_text && resp.model === CHAT, resp);
  // The SDK asks for base64 by default and decodes it: zeros mean a float reply misread.
  const emb = await oa.embeddings.create({ model: EMBED, input: ["a", "b"] });
  check("embeddings (base64 default)", emb.data.length === 2 && emb.data[0].embedding.some((x) => x !== 0), emb.data[0].embedding.slice(0, 4));
  const e = await rejects("unknown model", () => oa.chat.completions.create({ model: "qwen3-chta", messages: MSG }));
  check("unknown model: NotFoundError naming the model it meant", e instanceof NotFoundError && e.message.includes("qwen3-chat"), String(e));
  // Committed (progress_after: 200ms) before the model failed: the SDK still throws.
  const late = await rejects("failure after the stream began", async () => {
    for await (const _ of await oa.chat.completions.create({ model: "slowpoke", messages: MSG, stream: true }));
  });
  check("failure after the stream began throws", String(late).includes("slowpoke"), String(late));
}

async function ollamaChecks() {
  current = "npm ollama " + version("ollama");
  console.log(`--- ${current}`);
  const ol = new Ollama({ host: URL });
  const names = (await ol.list()).models.map((m) => m.model);
  check("list", names.includes(CHAT) && names.includes("embed-small"), names);
  const r = await ol.chat({ model: CHAT, messages: MSG });
  check("chat", r.message.content, r);
  let text = "";
  for await (const part of await ol.chat({ model: CHAT, messages: MSG, stream: true })) text += part.message.content;
  check("stream", text, text);
  const thought = await ol.chat({ model: CHAT, messages: MSG, think: true });
  check("think: the reasoning comes back as thinking", thought.message.thinking && thought.message.content, thought.message);
  const tool = { type: "function", function: { name: "get_weather", description: "weather", parameters: SCHEMA } };
  const first = await ol.chat({ model: CHAT, messages: MSG, tools: [tool] });
  const calls = first.message.tool_calls || [];
  check("tool call follows the schema", calls.length && followsSchema(calls[0].function.arguments), first.message);
  const second = await ol.chat({
    model: CHAT,
    tools: [tool],
    messages: [...MSG, first.message, { role: "tool", tool_name: calls[0].function.name, content: "rain" }],
  });
  check("tool result answered (second turn)", second.message.content && !second.message.tool_calls, second.message);
  const j = await ol.chat({ model: CHAT, messages: MSG, format: SCHEMA });
  check("format: schema", followsSchema(JSON.parse(j.message.content)), j.message.content);
  const emb = await ol.embed({ model: EMBED, input: ["a", "b"] });
  check("embed", emb.embeddings.length === 2, emb);
  const e = await rejects("unknown model", () => ol.chat({ model: "nope", messages: MSG }));
  check("unknown model: 404 with a message", e.status_code === 404 && e.error.includes("nope"), String(e));
}

(async () => {
  await openaiChecks();
  await ollamaChecks();
  console.log("all node client checks passed");
})().catch((e) => {
  console.log(`FAIL ${current}: ${e.stack || e}`);
  process.exit(1);
});
