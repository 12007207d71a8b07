// Streaming demo client: one WebSocket per stream, JPEG frames drawn on a canvas.
"use strict";
const $ = (id) => document.getElementById(id);
const canvas = $("screen"), ctx = canvas.getContext("2d");
let ws = null, startedAt = 0, firstFrame = false, frames = 0, recent = [], drawing = false, pending = null;

function setStatus(text) { $("status").textContent = text; }
function showError(text) { $("message").textContent = text || ""; }
function streaming(on) {
  $("start").disabled = on; $("stop").disabled = !on; $("switch").disabled = !on;
}

function numberField(id, integer) {
  const el = $(id), value = Number(el.value);
  const min = Number(el.min), max = Number(el.max);
  if (el.value.trim() === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))
      || value < min || value > max) {
    throw new Error(`${id.replace("_", " ")} must be ${integer ? "an integer" : "a number"} in [${min}, ${max}]`);
  }
  return value;
}

function readPrompt() {
  const text = $("prompt").value.trim();
  if (!text) throw new Error("the prompt is empty");
  if (text.length > 500) throw new Error("the prompt is longer than 500 characters");
  return text;
}

function draw(blob) {  // keep only the newest undrawn frame: never queue up behind the stream
  if (drawing) { pending = blob; return; }
  drawing = true;
  createImageBitmap(blob).then((bitmap) => {
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width; canvas.height = bitmap.height;
    }
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
  }).catch(() => {}).finally(() => {
    drawing = false;
    if (pending) { const next = pending; pending = null; draw(next); }
  });
}

function onFrame(blob) {
  const now = performance.now();
  if (!firstFrame) {
    firstFrame = true;
    $("latency").textContent = `${Math.round(now - startedAt)} ms`;
    setStatus("streaming");
  }
  frames += 1;
  recent.push(now);
  while (recent.length && now - recent[0] > 1000) recent.shift();
  $("frames").textContent = frames;
  $("fps").textContent = recent.length > 1
    ? (1000 * (recent.length - 1) / (now - recent[0])).toFixed(1) : "–";
  draw(blob);
}

function onMessage(msg) {
  switch (msg.type) {
    case "started":
      setStatus("waiting for the first frame");
      $("current").textContent = msg.prompt;
      break;
    case "stats": $("dropped").textContent = msg.dropped; break;
    case "prompt_switched": $("current").textContent = msg.prompt; break;
    case "busy": showError(msg.message); setStatus("busy"); break;
    case "warning": case "error": showError(msg.message); break;
    case "stopped":
      $("dropped").textContent = msg.dropped;
      setStatus(`stopped after ${msg.generated} frames`);
      if (msg.recording) { $("download").href = msg.recording; $("download").hidden = false; }
      break;
  }
}

function start() {
  let request;
  try {
    request = {
      type: "start", prompt: readPrompt(), seed: numberField("seed", true),
      sink_frames: numberField("sink_frames", true), window_frames: numberField("window_frames", true),
      alpha: numberField("alpha", false),
    };
  } catch (e) { showError(e.message); return; }
  showError(""); $("download").hidden = true;
  frames = 0; recent = []; firstFrame = false;
  $("frames").textContent = "0"; $("dropped").textContent = "0";
  $("fps").textContent = "–"; $("latency").textContent = "–";
  setStatus("connecting");
  streaming(true);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "blob";
  ws.onopen = () => { startedAt = performance.now(); ws.send(JSON.stringify(request)); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onMessage(JSON.parse(ev.data)); else onFrame(ev.data);
  };
  ws.onclose = () => {
    streaming(false); ws = null;
    if ($("status").textContent.startsWith("streaming") || $("status").textContent.startsWith("waiting")) {
      setStatus("disconnected");
    }
  };
}

function stop() {
  if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({ type: "stop" })); setStatus("stopping"); }
}

function switchPrompt() {
  let prompt;
  try { prompt = readPrompt(); } catch (e) { showError(e.message); return; }
  showError("");
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "prompt", prompt }));
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("switch").addEventListener("click", switchPrompt);

fetch("/api/config").then((r) => r.json()).then((cfg) => {  // the server's limits win
  if (cfg.note) { $("note").textContent = cfg.note; $("note").hidden = false; }
  for (const [name, [min, max]] of Object.entries(cfg.limits)) {
    const el = $(name);
    if (el) { el.min = min; el.max = max; }
  }
}).catch(() => {});
