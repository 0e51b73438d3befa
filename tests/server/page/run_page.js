// Runs the try-it page's script in Node against a live server, with just enough of a DOM: the element ids
// the page uses, fetch rooted at the server, localStorage. Usage: node run_page.js PAGE_URL (with ?autorun=1
// and form fields in the query). Prints {"status", "error", "images", "videos", "timings", "model"} as JSON.
"use strict";
const page = new URL(process.argv[2]);

class Element {
  constructor(tag, id) { Object.assign(this, { tag, id, value: "", textContent: "", className: "", children: [], rows: [], disabled: false, placeholder: "", listeners: {} }); }
  append(child) { this.children.push(child); }
  replaceChildren() { this.children = []; this.rows = []; }
  addEventListener(type, fn) { this.listeners[type] = fn; }
  insertRow() { const row = new Element("tr"); row.insertCell = () => { const c = new Element("td"); row.children.push(c); return c; }; this.rows.push(row); return row; }
  requestSubmit() { return this.listeners.submit({ preventDefault() {} }); }
}

async function main() {
  const response = await fetch(page);
  const html = await response.text();
  const elements = {};
  for (const m of html.matchAll(/<(\w+)[^>]*\sid="([^"]+)"[^>]*>([^<]*)/g)) {
    const el = new Element(m[1], m[2]);
    const name = m[0].match(/\sname="([^"]+)"/);
    if (name) el.name = name[1];
    if (m[1] === "textarea") el.value = m[3];
    elements[m[2]] = el;
  }
  const store = {};
  globalThis.localStorage = { getItem: (k) => store[k] ?? null, setItem: (k, v) => { store[k] = String(v); } };
  globalThis.location = { search: page.search };
  const realFetch = globalThis.fetch;
  globalThis.fetch = (url, options) => realFetch(new URL(url, page), options);
  globalThis.document = {
    getElementById: (id) => elements[id],
    createElement: (tag) => new Element(tag),
    querySelectorAll: (selector) => (selector === "#form [name]" ? Object.values(elements).filter((e) => e.name) : []),
  };
  globalThis.URL.createObjectURL = () => "blob:video";
  const script = html.match(/<script>([\s\S]*)<\/script>/)[1];
  new Function(script)();
  const deadline = Date.now() + 120000;
  // The form is submitted after the model card loads; wait until the button is enabled again after it ran.
  while (Date.now() < deadline) {
    await new Promise((done) => setTimeout(done, 100));
    const status = elements.status.textContent;
    if (status && status !== "generating…" && !status.startsWith("video video_") && !elements.go.disabled) break;
  }
  const outputs = elements.outputs.children;
  console.log(JSON.stringify({
    status: elements.status.textContent,
    error: elements.status.className === "error",
    model: elements.model.textContent,
    images: outputs.filter((o) => o.tag === "img").map((o) => o.src.slice(0, 30)),
    videos: outputs.filter((o) => o.tag === "video").length,
    timings: elements.timings.rows.map((r) => r.children[0].textContent),
  }));
}
main().catch((e) => { console.log(JSON.stringify({ status: String(e), error: true })); process.exit(1); });
