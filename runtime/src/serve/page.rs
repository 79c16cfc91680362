//! The chat page served at `/`: one HTML file with its own style and script and no
//! dependencies, streaming replies from `/v1/chat/completions`. Opening `/?q=TEXT`
//! sends TEXT as the first message (the headless browser test uses it).

pub const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mcc chat</title>
<style>
  :root { --bg: #f7f7f8; --fg: #1d1d1f; --muted: #6e6e73; --user: #dbeafe; --bot: #ffffff; --line: #e3e3e6; --accent: #2563eb; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--fg); display: flex; flex-direction: column; height: 100vh; }
  header { padding: 10px 16px; border-bottom: 1px solid var(--line); background: #fff; display: flex; gap: 12px; align-items: baseline; }
  header h1 { font-size: 16px; margin: 0; }
  header span { color: var(--muted); font-size: 13px; }
  #log { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: 760px; padding: 10px 14px; border-radius: 12px; white-space: pre-wrap; word-wrap: break-word; border: 1px solid var(--line); }
  .user { align-self: flex-end; background: var(--user); }
  .assistant { align-self: flex-start; background: var(--bot); }
  .error { align-self: center; color: #b91c1c; background: #fee2e2; }
  .stats { color: var(--muted); font-size: 12px; margin-top: 4px; }
  form { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid var(--line); background: #fff; }
  textarea { flex: 1; resize: none; font: inherit; padding: 8px 10px; border: 1px solid var(--line); border-radius: 8px; height: 44px; }
  button { font: inherit; padding: 0 16px; border: 0; border-radius: 8px; background: var(--accent); color: #fff; cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  #stop { background: #6b7280; }
</style>
</head>
<body>
<header><h1>mcc chat</h1><span id="model">connecting…</span></header>
<div id="log" aria-live="polite"></div>
<form id="form">
  <textarea id="input" placeholder="Type a message; Enter sends, Shift+Enter starts a new line" autofocus></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<script>
"use strict";
const log = document.getElementById("log"), input = document.getElementById("input");
const send = document.getElementById("send"), stopButton = document.getElementById("stop");
const messages = [];
let controller = null;
const key = () => localStorage.getItem("mcc-api-key") || "";
const headers = () => {
  const h = { "Content-Type": "application/json" };
  if (key()) h["Authorization"] = "Bearer " + key();
  return h;
};

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

fetch("/v1/models", { headers: headers() }).then(r => r.json()).then(j => {
  const m = j.data && j.data[0];
  document.getElementById("model").textContent = m ? m.id + " · context " + m.meta.n_ctx : "";
}).catch(() => {});

async function ask(text) {
  messages.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.classList.add("streaming");
  send.disabled = true; stopButton.disabled = false;
  controller = new AbortController();
  const t0 = performance.now();
  let first = 0, tokens = 0, reply = "";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ messages, stream: true, stream_options: { include_usage: true } }),
    });
    if (r.status === 401) {
      const k = prompt("This server needs an API key:");
      if (k) localStorage.setItem("mcc-api-key", k);
      throw new Error("unauthorized: send the message again with the key");
    }
    if (!r.ok) throw new Error((await r.json()).error.message);
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, nl).trim(); buf = buf.slice(nl + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        for (const c of chunk.choices) {
          const piece = c.delta && c.delta.content;
          if (piece) { if (!first) first = performance.now(); reply += piece; out.textContent = reply; log.scrollTop = log.scrollHeight; }
        }
      }
    }
    messages.push({ role: "assistant", content: reply });
    const secs = (performance.now() - first) / 1000;
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = tokens + " tokens · first after " + Math.round(first - t0) + " ms" + (tokens > 1 && secs > 0 ? " · " + ((tokens - 1) / secs).toFixed(1) + " tokens/s" : "");
    out.appendChild(stats);
  } catch (e) {
    if (e.name === "AbortError") { messages.push({ role: "assistant", content: reply }); }
    else { messages.pop(); out.remove(); bubble("error", String(e.message || e)); }
  } finally {
    out.classList.remove("streaming");
    document.body.dataset.done = String(Number(document.body.dataset.done || 0) + 1);
    send.disabled = false; stopButton.disabled = true; controller = null; input.focus();
  }
}

document.getElementById("form").addEventListener("submit", e => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = "";
  ask(text);
});
input.addEventListener("keydown", e => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); document.getElementById("form").requestSubmit(); }
});
stopButton.addEventListener("click", () => controller && controller.abort());
const q = new URLSearchParams(location.search).get("q");
if (q) ask(q);
</script>
</body>
</html>
"##;
