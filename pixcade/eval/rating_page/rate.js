// The DrawBench rating page. It knows nothing of models: it asks the server for a
// comparison (an opaque token, a prompt and image URLs for sets "A" and "B"), lets the
// rater answer both questions, and posts {"token", "fidelity", "quality"} back.
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
  // A POST: it opens a comparison (state), so a cross-site page can't make the browser ask.
  const r = await fetch("/api/next", { method: "POST", cache: "no-store" });
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
