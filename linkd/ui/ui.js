// The topology page: the stack's picture from the daemon (GET /v1/stacks/S/graph, drawn
// by linkd.core.graph_formats), redrawn on every event of the daemon's event stream for
// that stack (no polling); a container's environment (secrets masked), the names it may
// reach and its last log lines on a click. Read-only: it only ever GETs.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const SECRET = /PASSWORD|SECRET|TOKEN|KEY/i;
let stack = null;

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
  if (!names.includes(stack)) stack = names[0] || null;
  select.value = stack || "";
  await draw();
}

async function draw() {
  const picture = document.getElementById("picture");
  if (!stack) { picture.textContent = "no stack is up"; return; }
  // Our own SVG: every name in it is escaped by the daemon (graph_formats).
  picture.innerHTML = await (await get(`/v1/stacks/${encodeURIComponent(stack)}/graph`)).text();
  for (const node of picture.querySelectorAll("[data-container]")) {
    node.addEventListener("click", () => show(node.dataset.container));
  }
  say(`updated ${new Date().toLocaleTimeString()}`);
}

function row(table, cells) {
  const tr = table.insertRow();
  for (const cell of cells) {
    const td = tr.insertCell();
    if (cell instanceof Node) td.append(cell); else td.textContent = cell;
  }
}

async function show(name) {
  const base = `/v1/stacks/${encodeURIComponent(stack)}/containers/${encodeURIComponent(name)}`;
  const container = await (await get(base)).json();
  document.getElementById("details").hidden = false;
  document.getElementById("container-name").textContent = name;
  const env = document.getElementById("env");
  env.replaceChildren();
  for (const [key, value] of container.plan.env) {
    if (SECRET.test(key)) {
      const button = document.createElement("button");
      button.className = "reveal";
      button.textContent = "hidden: show";
      button.addEventListener("click", () => { button.replaceWith(value); });
      row(env, [key, button]);
    } else {
      row(env, [key, value]);
    }
  }
  const dns = document.getElementById("dns");
  dns.replaceChildren();
  const plan = await (await get(`/v1/stacks/${encodeURIComponent(stack)}`)).json();
  const names = [...new Set(plan.plan.containers.flatMap(c => [c.service, c.name]))];
  for (const asked of names) {
    const answer = await (await get(`${base}/dns`, { name: asked })).json();
    const got = (answer.records || []).map(r => r.data || r.address || JSON.stringify(r));
    row(dns, [asked, answer.rcode || "", got.join(", ")]);
  }
  const text = await (await get(`${base}/logs`, { tail: "20" })).text();
  document.getElementById("logs").textContent = text;
}

function follow() {
  const events = new EventSource(url("/v1/events"));
  const redraw = (message) => {
    try {
      const event = JSON.parse(message.data);
      if (event.stack && event.stack !== stack) return;
    } catch (_) { /* a comment line */ }
    loadStacks().catch(error => say(String(error)));
  };
  for (const kind of ["lifecycle", "health", "dns", "stack"]) events.addEventListener(kind, redraw);
  events.onerror = () => say("event stream lost; the browser retries");
}

document.getElementById("stacks").addEventListener("change", (e) => {
  stack = e.target.value;
  draw().catch(error => say(String(error)));
});
loadStacks().then(follow).catch(error => say(String(error)));
