"""The rating page: one static HTML document with its script (no external assets).

It knows nothing of models: it asks the server for a comparison (an opaque token, a
prompt and image URLs for sets "A" and "B"), lets the rater answer both questions, and
posts ``{"token", "fidelity", "quality"}`` back.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pixcade DrawBench rating</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 70rem; color: #222; }
  #prompt { font-size: 1.5rem; margin: .5rem 0 1rem; }
  .sets { display: flex; gap: 2rem; }
  .set { flex: 1; }
  .set h2 { margin: 0 0 .5rem; font-size: 1.1rem; }
  .grid { display: grid; grid-template-columns: repeat(2, 1fr); gap: .4rem; }
  .grid img { width: 100%; image-rendering: auto; background: #eee; aspect-ratio: 1; }
  fieldset { border: 1px solid #ccc; margin: 1rem 0; padding: .6rem 1rem; }
  .choice { margin-right: .6rem; padding: .4rem 1.1rem; font-size: 1rem; cursor: pointer; }
  .choice[aria-pressed="true"] { background: #2a5bd7; color: white; border-color: #2a5bd7; }
  #submit { padding: .6rem 2rem; font-size: 1.1rem; }
  #status { margin-left: 1rem; }
  .error { color: #b00020; }
</style>
</head>
<body>
<p>Compare the two image sets for the text below. Votes so far: <span id="rated">0</span></p>
<div id="prompt">Loading&hellip;</div>
<div class="sets">
  <section class="set"><h2>Image set A</h2><div class="grid" id="set-A"></div></section>
  <section class="set"><h2>Image set B</h2><div class="grid" id="set-B"></div></section>
</div>
<form id="form">
  <div id="questions"></div>
  <button type="submit" id="submit" disabled>Submit vote</button><span id="status" role="status"></span>
</form>
<script>
"use strict";
const LABELS = { A: "Set A", B: "Set B", indifferent: "Indifferent" };
let current = null;
let answers = {};

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function setStatus(text, isError) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function updateSubmit() {
  const ready = current && Object.keys(current.questions).every(q => answers[q]);
  document.getElementById("submit").disabled = !ready;
}

function render(c) {
  current = c;
  answers = {};
  document.getElementById("rated").textContent = c.rated;
  document.getElementById("prompt").textContent = c.prompt;
  for (const side of ["A", "B"]) {
    const grid = document.getElementById("set-" + side);
    grid.replaceChildren(...c.images[side].map((src, i) =>
      el("img", { src: src, alt: "set " + side + " image " + (i + 1) })));
  }
  const qs = document.getElementById("questions");
  qs.replaceChildren();
  for (const [q, text] of Object.entries(c.questions)) {
    const fs = el("fieldset", { id: "q-" + q });
    fs.appendChild(el("legend", {}, text));
    for (const choice of c.choices) {
      const b = el("button", { type: "button", class: "choice", "data-q": q, "data-choice": choice,
                              "aria-pressed": "false" }, LABELS[choice] || choice);
      b.addEventListener("click", () => {
        answers[q] = choice;
        fs.querySelectorAll(".choice").forEach(x =>
          x.setAttribute("aria-pressed", String(x === b)));
        updateSubmit();
      });
      fs.appendChild(b);
    }
    qs.appendChild(fs);
  }
  updateSubmit();
}

async function loadNext() {
  const r = await fetch("/api/next", { cache: "no-store" });
  const c = await r.json();
  if (c.done) {
    current = null;
    document.getElementById("prompt").textContent = c.message;
    updateSubmit();
    return;
  }
  render(c);
}

document.getElementById("form").addEventListener("submit", async ev => {
  ev.preventDefault();
  if (!current) return;
  document.getElementById("submit").disabled = true;
  const body = Object.assign({ token: current.token }, answers);
  const r = await fetch("/api/vote", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const reply = await r.json();
  if (!r.ok) { setStatus("Not recorded: " + reply.error, true); updateSubmit(); return; }
  setStatus("Thanks, recorded.", false);
  document.getElementById("rated").textContent = reply.rated;
  await loadNext();
});

loadNext().catch(e => setStatus("Could not load a comparison: " + e, true));
</script>
</body>
</html>
"""
