// The topology page: the stack's picture from the daemon (GET /v1/stacks/S/graph, drawn
// by linkd.core.graph_formats), redrawn on the daemon's events (no polling); a container's
// environment (secrets masked until asked), the names it may reach as it resolves them,
// and its last log lines on a click. Read-only: it only ever GETs.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const SECRET = /PASSWORD|SECRET|TOKEN|KEY/i;
let stack = null;
let shown = null;  // the container whose details are open
const revealed = new Set();  // names of its secret variables the user asked to see

function url(path, query = {}) {
  const params = new URLSearchParams(query);
  if (token) params.set("token", token);
  const q = params.toString();
  return q ? `${path}?${q}` : path;
}

async function get(path, query) {
  const response = await fetch(url(path, query));
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response;
}

function say(text) { document.getElementById("status").textContent = text; }

async function loadStacks() {
  const found = await (await get("/v1/stacks")).json();
  const names = found.map(s => s.name).sort();
  const select = document.getElementById("stacks");
  select.replaceChildren(...names.map(n => new Option(n, n)));
  if (!names.includes(stack)) choose(names[0] || null);
  select.value = stack || "";
  await draw();
}

function choose(name) {
  stack = name;
  shown = null;
  document.getElementById("details").hidden = true;
}

async function draw() {
  const picture = document.getElementById("picture");
  if (!stack) { picture.textContent = "no stack is up"; return; }
  // Our own SVG: every name in it is escaped by the daemon (graph_formats).
  picture.innerHTML = await (await get(`/v1/stacks/${encodeURIComponent(stack)}/graph`)).text();
  for (const node of picture.querySelectorAll("[data-container]")) {
    const open = () => show(node.dataset.container).catch(e => say(String(e)));
    // A keyboard reaches each container too: Tab to it, Enter or Space opens it.
    node.setAttribute("tabindex", "0");
    node.setAttribute("role", "button");
    node.setAttribute("aria-label", `container ${node.dataset.container}`);
    node.addEventListener("click", open);
    node.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); }
    });
  }
  say(`updated ${new Date().toLocaleTimeString()}`);
}

function rows(list) {
  return list.map(cells => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = tr.insertCell();
      td.append(cell);
    }
    return tr;
  });
}

function secret(key, value) {
  const button = document.createElement("button");
  button.className = "reveal";
  button.textContent = "hidden: show";
  button.addEventListener("click", () => { revealed.add(key); button.replaceWith(value); });
  return button;
}

async function show(name) {
  if (name !== shown) revealed.clear();
  shown = name;
  const base = `/v1/stacks/${encodeURIComponent(stack)}/containers/${encodeURIComponent(name)}`;
  // Everything is fetched first and swapped in at once: a redraw meanwhile never mixes.
  const [container, names, log] = await Promise.all([
    get(base).then(r => r.json()),
    get(`${base}/names`).then(r => r.json()),
    get(`${base}/logs`, { tail: "20" }).then(r => r.text()),
  ]);
  if (shown !== name) return;
  const env = container.plan.env.map(([key, value]) =>
    [key, SECRET.test(key) && !revealed.has(key) ? secret(key, value) : value]);
  const answers = names.map(found => {
    const got = found.records.map(r => r.data);
    return [found.name, got.length ? got.join(", ") : found.rcode || "no answer"];
  });
  document.getElementById("container-name").textContent = name;
  document.getElementById("env").replaceChildren(...rows(env));
  document.getElementById("dns").replaceChildren(...rows(answers));
  document.getElementById("logs").textContent = log;
  document.getElementById("details").hidden = false;
}

// Events come in bursts (a stack going up is dozens): one redraw at a time, and one more
// after it if anything came meanwhile.
let drawing = false;
let dirty = false;
async function redraw() {
  dirty = true;
  if (drawing) return;
  drawing = true;
  try {
    while (dirty) {
      dirty = false;
      await loadStacks();
      if (shown) await show(shown);
    }
  } catch (error) {
    say(String(error));
  } finally {
    drawing = false;
  }
}

function follow() {
  const events = new EventSource(url("/v1/events"));
  const changed = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    // Another stack's containers change nothing here; any stack coming or going does.
    if (event.type !== "stack" && event.stack && event.stack !== stack) return;
    redraw();
  };
  for (const kind of ["lifecycle", "health", "dns", "stack"]) {
    events.addEventListener(kind, changed);
  }
  events.onopen = () => redraw();  // whatever changed while the stream was away
  events.onerror = () => say("event stream lost; the browser retries");
}

document.getElementById("stacks").addEventListener("change", (e) => {
  choose(e.target.value);
  draw().catch(error => say(String(error)));
});
follow();
