// pixcade serve page: submit a job, follow it (Server-Sent Events, polling as fallback),
// show each stage's progress and images as soon as they exist, link each image as a PNG.
"use strict";

const $ = (id) => document.getElementById(id);
const MIN_DISPLAY_PX = 128; // small stage images are scaled up (pixelated) to stay visible
let current = null; // id of the job shown; events of any other job are ignored
let stream = null;
let pollTimer = null;

function showMessage(text, isError) {
  const el = $("message");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function loadConfig() {
  try {
    const res = await fetch("/api/config");
    const cfg = await res.json();
    const lim = cfg.limits;
    $("prompt").maxLength = lim.max_prompt_chars;
    $("n").max = lim.max_images;
    $("steps").max = lim.max_steps;
    $("negative").maxLength = lim.max_prompt_chars;
    if (lim.max_image_side) editor.maxSide = lim.max_image_side;
    const allowed = cfg.stages.filter((s) => s.allowed);
    $("model").textContent = "stages: " + allowed.map((s) => `${s.name} (${s.resolution}px, ` +
      `${s.steps} steps, guidance ${s.guidance})`).join(" \u2192 ") +
      ` \u00b7 up to ${lim.max_images} images, ${lim.max_steps} steps, ${lim.max_prompt_chars} characters`;
  } catch (err) {
    $("model").textContent = "could not read the server's settings: " + err;
  }
}

function readForm() {
  const body = { prompt: $("prompt").value, n: Number($("n").value || 1), seed: Number($("seed").value || 0) };
  if ($("guidance").value !== "") body.guidance = Number($("guidance").value);
  if ($("steps").value !== "") body.steps = Number($("steps").value);
  if ($("negative").value.trim() !== "") body.negative_prompt = $("negative").value;
  if (editor.loaded) {
    body.image = $("image-canvas").toDataURL("image/png");
    body.strength = Number($("strength").value === "" ? 1 : $("strength").value);
    if (editor.painted) body.mask = $("mask-canvas").toDataURL("image/png");
  }
  return body;
}

// The image to edit and its mask: the mask canvas lies over the image at the same pixel
// size; opaque paint marks the pixels to redraw (what the server reads as the mask).
const editor = { loaded: false, painted: false, drawing: false, maxSide: 256 };

function showEditor(img) {
  const side = Math.max(img.naturalWidth, img.naturalHeight);
  if (side > editor.maxSide) {
    showMessage(`the image is ${img.naturalWidth}x${img.naturalHeight}; this server takes at most ` +
      `${editor.maxSide} px a side`, true);
    return;
  }
  const scale = Math.max(1, Math.floor(256 / side)); // small images are shown enlarged
  for (const id of ["image-canvas", "mask-canvas"]) {
    const c = $(id);
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    c.style.width = `${img.naturalWidth * scale}px`;
    c.style.height = `${img.naturalHeight * scale}px`;
  }
  $("image-canvas").getContext("2d").drawImage(img, 0, 0);
  editor.loaded = true;
  editor.painted = false;
  $("editor").hidden = false;
  showMessage("", false);
}

function loadImageFile() {
  const file = $("image-file").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => showEditor(img);
    img.onerror = () => showMessage("cannot read that image", true);
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
}

function paint(event) {
  const c = $("mask-canvas");
  const r = c.getBoundingClientRect();
  const x = (event.clientX - r.left) * (c.width / r.width);
  const y = (event.clientY - r.top) * (c.height / r.height);
  const ctx = c.getContext("2d");
  ctx.fillStyle = "rgb(255, 0, 90)";
  ctx.beginPath();
  ctx.arc(x, y, Number($("brush").value || 6) / 2, 0, 2 * Math.PI);
  ctx.fill();
  editor.painted = true;
}

$("image-file").addEventListener("change", loadImageFile);
$("mask-canvas").addEventListener("pointerdown", (e) => { editor.drawing = true; paint(e); });
$("mask-canvas").addEventListener("pointermove", (e) => { if (editor.drawing) paint(e); });
window.addEventListener("pointerup", () => { editor.drawing = false; });
$("clear-mask").addEventListener("click", () => {
  const c = $("mask-canvas");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  editor.painted = false;
});
$("remove-image").addEventListener("click", () => {
  editor.loaded = editor.painted = false;
  $("editor").hidden = true;
  $("image-file").value = "";
});

async function submit(event) {
  event.preventDefault();
  const button = $("generate");
  button.disabled = true;
  showMessage("submitting\u2026", false);
  try {
    const res = await fetch("/api/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(readForm()),
    });
    const data = await res.json();
    if (!res.ok) {
      showMessage(data.error || `refused (HTTP ${res.status})`, true);
      return;
    }
    showMessage("", false);
    follow(data);
  } catch (err) {
    showMessage("request failed: " + err, true);
  } finally {
    button.disabled = false;
  }
}

function stopFollowing() {
  if (stream) { stream.close(); stream = null; }
  if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
}

function follow(job) {
  stopFollowing();
  current = job.id;
  $("stages").replaceChildren();
  $("job").hidden = false;
  render(job);
  if (!window.EventSource) { poll(job.id); return; }
  let ended = false;
  stream = new EventSource(`/api/jobs/${job.id}/events`);
  stream.addEventListener("status", (e) => render(JSON.parse(e.data)));
  stream.addEventListener("end", () => { ended = true; stopFollowing(); });
  stream.onerror = () => {
    // The stream broke before the job ended (proxy, network): keep going by polling.
    if (!ended && current === job.id) { stopFollowing(); poll(job.id); }
  };
}

async function poll(id) {
  if (current !== id) return;
  try {
    const res = await fetch(`/api/jobs/${id}`);
    const data = await res.json();
    if (!res.ok) { showMessage(data.error, true); return; }
    render(data);
    if (data.state === "done" || data.state === "failed") return;
  } catch (err) {
    showMessage("lost contact with the server, retrying\u2026", true);
  }
  pollTimer = setTimeout(() => poll(id), 500);
}

function stateText(job) {
  if (job.state === "queued") return `queued (position ${job.queue_position})`;
  if (job.state === "failed") return "failed: " + job.error;
  if (job.state === "running") {
    const s = job.stages.find((st) => !st.done);
    return s ? `running: ${s.name}, step ${s.step} of ${s.total}` : "running";
  }
  return "done";
}

function stageBox(job, stage) {
  let box = document.querySelector(`.stage[data-stage="${CSS.escape(stage.name)}"]`);
  if (box) return box;
  box = document.createElement("div");
  box.className = "stage";
  box.dataset.stage = stage.name;
  const title = document.createElement("h2");
  title.textContent = stage.name;
  const bar = document.createElement("progress");
  const steps = document.createElement("span");
  steps.className = "steps";
  const images = document.createElement("div");
  images.className = "images";
  box.append(title, bar, steps, images);
  $("stages").append(box);
  return box;
}

function addImage(container, job, stage, k, image) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = image.url;
  img.alt = `${job.request.prompt} (${stage.name}, image ${k + 1})`;
  img.dataset.stage = stage.name;
  img.dataset.index = String(k);
  const scale = Math.max(1, Math.ceil(MIN_DISPLAY_PX / image.width));
  img.width = image.width * scale;
  img.height = image.height * scale;
  const link = document.createElement("a");
  link.href = image.url + "?download=1";
  link.download = `pixcade-${job.id}-${stage.name}-${k}.png`;
  link.className = "download";
  link.textContent = `download PNG (${image.width}\u00d7${image.height})`;
  fig.append(img, link);
  container.append(fig);
}

function render(job) {
  if (job.id !== current) return;
  $("job").dataset.state = job.state;
  $("job-state").textContent = stateText(job);
  for (const stage of job.stages) {
    const box = stageBox(job, stage);
    box.dataset.done = String(stage.done);
    const bar = box.querySelector("progress");
    bar.max = stage.total;
    bar.value = stage.step;
    box.querySelector(".steps").textContent =
      (stage.done ? "done" : `${stage.step} / ${stage.total} steps`) + `, ${stage.precision}`;
    const images = box.querySelector(".images");
    for (let k = images.children.length; k < stage.images.length; k++) {
      addImage(images, job, stage, k, stage.images[k]);
    }
  }
}

$("random-seed").addEventListener("click", () => {
  $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
});
$("form").addEventListener("submit", submit);
loadConfig();
