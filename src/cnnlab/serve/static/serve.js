"use strict";
// cnnlab serve's page: uploads (file chooser, drop, paste, samples) to /api/classify and /api/segment, and their
// answers shown, blended and offered as downloads. Every text from the server or from a file name goes in through
// textContent, never as HTML. Nothing is loaded from outside the server: the page works offline.
const $ = (id) => document.getElementById(id);
const KINDS = {
  classify: { title: "Classification", verb: "Classifying", upload: (n) => `Image to classify as one of these ${n} classes` },
  segment: { title: "Segmentation", verb: "Segmenting", upload: (n) => `Photo to split into these ${n} classes` },
};
const SPLIT_NAMES = { val: "validation", test: "test" };
const limits = { max_upload_bytes: Infinity, max_pixels: 40e6 };
const ready = { classify: false, segment: false };
const modelNames = {};  // slot -> the served model's name, for the JSON downloads
let classColors = {};  // class -> colour of the classify model, for the bars
let lastKind = "classify";  // where a paste goes when no card holds the focus

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function say(kind, text, isError = false) {
  $(kind + "-status").textContent = text;
  $(kind + "-status").className = isError ? "status error" : "status";
}

const percent = (share) => (100 * share).toFixed(1) + " %";
const megabytes = (bytes) => `${+(bytes / 2 ** 20).toFixed(1)} MB`;
const stem = (name) => name.replace(/\.[^.]*$/, "") || "image";

// ---------------------------------------------------------------- errors as one sentence

// The API answers every error as {"detail": "one line"} for programs; people get one sentence saying what to do.
function errorSentence(status, detail, fileName, retryAfter) {
  const ext = ((fileName || "").match(/\.([A-Za-z0-9]{1,5})$/) || [])[1];
  let found;
  switch (status) {
    case 0:
      return "The server did not answer. Check that cnnlab serve is still running, then try again.";
    case 413:
      return `That file is too large: the limit is ${megabytes(limits.max_upload_bytes)}. Try a smaller image.`;
    case 415:
      return `That file is not an image we can read${ext ? ` (${ext.toUpperCase()})` : ""}. Try a JPEG or PNG.`;
    case 503:
      if (/^busy/.test(detail)) {
        return `The server is busy with other images. Try again in ${retryAfter || 2} seconds.`;
      }
      return "There is no model for this on the server, so it cannot run. Restart the server with one.";
    case 400:
      if ((found = detail.match(/(\d+)x(\d+) pixels is too small.*under (\d+) px/))) {
        return `That image is too small (${found[1]}×${found[2]} px). Use one at least ${found[3]} px on each side.`;
      }
      if (/over the limit of|decompression bomb/.test(detail)) {
        const mp = Math.round(limits.max_pixels / 1e6);
        return `That image has too many pixels: the limit is ${mp} megapixels. Shrink it, then try again.`;
      }
      if (/strip longer than/.test(detail)) {
        return "That image is too long and thin. Crop it to the part you want, then try again.";
      }
      if (/not a readable image/.test(detail)) {
        return "That image seems damaged or cut short. Save it again, or try another one.";
      }
      return "The server could not read that upload as an image. Try again, or try another image.";
    default:
      return `Something went wrong on the server (error ${status}). Its log says more; try another image.`;
  }
}

class UploadError extends Error {}

async function post(kind, file) {
  if (file.size > limits.max_upload_bytes) throw new UploadError(errorSentence(413, "", file.name));
  const body = new FormData();
  body.append("file", file);
  let response;
  try {
    response = await fetch("api/" + kind, { method: "POST", body });
  } catch (error) {
    throw new UploadError(errorSentence(0, String(error), file.name));
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : response.statusText;
    console.info(`cnnlab: ${response.status}: ${detail}`);  // the server's own words, for whoever looks
    throw new UploadError(errorSentence(response.status, detail, file.name, response.headers.get("Retry-After")));
  }
  return data;
}

// ---------------------------------------------------------------- sending an image, from any source

const shown = { classify: {}, segment: {} };  // the last answer of each card, for its toggles and downloads
const sent = { classify: 0, segment: 0 };  // uploads per card: only the latest one's answer is shown

async function send(kind, file, sample) {
  lastKind = kind;
  if (!ready[kind]) {
    say(kind, errorSentence(503, "", file.name), true);
    return;
  }
  const ticket = ++sent[kind];
  $(kind + "-result").hidden = true;
  say(kind, `${KINDS[kind].verb} ${file.name}…`);
  try {
    const data = await post(kind, file);
    if (ticket !== sent[kind]) return;
    await SHOW[kind](data, file, sample);
    $(kind + "-notes").replaceChildren(...data.notes.map((note) => el("li", note)));
    $(kind + "-result").hidden = false;
  } catch (error) {
    if (!(error instanceof UploadError)) throw error;
    if (ticket === sent[kind]) say(kind, error.message, true);
  }
}

function jsonLink(link, kind, file, numbers) {
  URL.revokeObjectURL(link.href);
  const text = JSON.stringify({ file: file.name, model: modelNames[kind], ...numbers }, null, 1);
  link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  link.download = `${stem(file.name)}_${kind}.json`;
}

function loaded(img, src) {
  img.src = src;
  return img.decode().catch(() => {});  // a broken image shows as broken; the answer is still worth showing
}

// ---------------------------------------------------------------- classification

async function showClassified(data, file, sample) {
  URL.revokeObjectURL(shown.classify.upload);
  shown.classify = { upload: URL.createObjectURL(file), input: data.input_png, cam: data.cam_png };
  // Nothing the model could classify: the upload and why, never a ranking of guesses.
  for (const id of ["classify-input-figure", "classify-explain", "classify-explain-help", "top"]) {
    $(id).hidden = Boolean(data.nothing_found);
  }
  if (data.nothing_found) {
    $("classify-truth").hidden = true;
    await loaded($("classify-preview"), shown.classify.upload);
    jsonLink($("classify-download-json"), "classify", file, { nothing_found: data.nothing_found, notes: data.notes });
    say("classify", `${file.name}: ${data.nothing_found}`);
    return;
  }
  await Promise.all([loaded($("classify-preview"), shown.classify.upload), showInput()]);
  const size = `${$("classify-input").naturalWidth}×${$("classify-input").naturalHeight}`;
  $("classify-input-caption").textContent = `What the model saw: ${size} px`;
  $("top").tBodies[0].replaceChildren(...data.top.map((guess) => {
    const bar = el("div", undefined, "bar");
    bar.style.width = percent(guess.probability).replace(" ", "");
    if (classColors[guess.class]) bar.style.background = classColors[guess.class];
    const row = el("tr");
    row.append(el("td", guess.class), el("td", percent(guess.probability), "num"), el("td", undefined, "bar-cell"));
    row.cells[2].append(bar);
    return row;
  }));
  const best = data.top[0];
  $("classify-truth").hidden = !sample?.label;
  if (sample?.label) {
    const agree = sample.label === best.class;
    $("classify-truth").textContent = `Its label in the data set: ${sample.label}. ` +
      (agree ? "The model agrees." : `The model says ${best.class} instead.`);
  }
  jsonLink($("classify-download-json"), "classify", file, { top: data.top, notes: data.notes });
  say("classify", `${file.name}: ${best.class} (${percent(best.probability)})`);
}

function showInput() {
  const explained = $("classify-explain").getAttribute("aria-pressed") === "true";
  $("classify-input").alt = explained
    ? "The image as the model saw it, with where it looked in red"
    : "The image as the model saw it";
  return loaded($("classify-input"), explained ? shown.classify.cam : shown.classify.input);
}

// ---------------------------------------------------------------- segmentation

function opacity() {
  return $("segment-opacity").value / 100;
}

function pressed(id) {
  return $(id).getAttribute("aria-pressed") === "true";
}

// The photo, and over it the class colours (the label map) or the confidence at the slider's opacity; the
// "original" toggle hides the layer. The overlay download is what the card shows, at the photo's size.
function showLayer() {
  const confident = pressed("segment-explain");
  const layer = $("overlay");
  layer.classList.toggle("smooth", confident);  // class colours keep sharp edges; confidence is a smooth map
  layer.alt = confident
    ? "The photo coloured by how sure the model is of each pixel"
    : "Each pixel of the photo coloured by its class";
  layer.style.opacity = pressed("segment-original") ? 0 : opacity();
  return loaded(layer, confident ? shown.segment.confidence : shown.segment.labels);
}

function overlayPng() {
  const photo = $("segment-photo");
  const canvas = document.createElement("canvas");
  canvas.width = photo.naturalWidth;
  canvas.height = photo.naturalHeight;
  const pen = canvas.getContext("2d");
  pen.drawImage(photo, 0, 0);
  pen.globalAlpha = opacity();
  pen.imageSmoothingEnabled = pressed("segment-explain");
  pen.drawImage($("overlay"), 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/png");
}

function refreshOverlayLink() {
  if (shown.segment.labels) $("segment-download-overlay").href = overlayPng();
}

async function showSegmented(data, file) {
  shown.segment = { labels: data.labels_png, confidence: data.confidence_map_png };
  await Promise.all([loaded($("segment-photo"), data.photo_jpeg), showLayer()]);
  $("areas").tBodies[0].replaceChildren(...Object.entries(data.areas).map(([name, share]) => {
    const row = el("tr");
    row.append(el("td"), el("td", name), el("td", percent(share), "num"));
    row.cells[0].append(swatch(data.colors[name]));
    return row;
  }));
  const name = stem(file.name);
  $("segment-download-overlay").download = `${name}_overlay.png`;
  refreshOverlayLink();
  $("segment-download-labels").href = data.labels_png;
  $("segment-download-labels").download = `${name}_labels.png`;
  const { width, height, areas, colors, notes } = data;
  jsonLink($("segment-download-json"), "segment", file, { width, height, areas, colors, notes });
  say("segment", `${file.name}: ${data.width}×${data.height} px`);
}

const SHOW = { classify: showClassified, segment: showSegmented };

function toggle(id, then) {
  $(id).addEventListener("click", async () => {
    $(id).setAttribute("aria-pressed", String(!pressed(id)));
    await then();
  });
}

toggle("classify-explain", showInput);
toggle("segment-explain", async () => { await showLayer(); refreshOverlayLink(); });
toggle("segment-original", showLayer);
$("segment-opacity").addEventListener("input", () => {
  $("segment-opacity-value").textContent = `${$("segment-opacity").value} %`;
  $("segment-opacity").setAttribute("aria-valuetext", `${$("segment-opacity").value} %`);
  $("segment-original").setAttribute("aria-pressed", "false");  // moving the slider shows the overlay again
  $("overlay").style.opacity = opacity();
});
$("segment-opacity").addEventListener("change", refreshOverlayLink);

// ---------------------------------------------------------------- file chooser, drop, paste

for (const kind of Object.keys(KINDS)) {
  const card = $(kind);
  $(kind + "-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";  // so that choosing the same file again sends it again
    if (file) send(kind, file);
  });
  card.addEventListener("focusin", () => { lastKind = kind; });
  card.addEventListener("pointerdown", () => { lastKind = kind; });
  card.addEventListener("dragover", (event) => {
    event.preventDefault();
    card.classList.add("dragging");
  });
  card.addEventListener("dragleave", (event) => {
    if (!card.contains(event.relatedTarget)) card.classList.remove("dragging");
  });
  card.addEventListener("drop", (event) => {
    event.preventDefault();
    card.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) send(kind, file);
    else say(kind, "Drop an image file from your computer here; links and text cannot be read.", true);
  });
}

// A file dropped beside the cards would make the browser leave the page to show it.
for (const type of ["dragover", "drop"]) document.addEventListener(type, (event) => event.preventDefault());

document.addEventListener("paste", (event) => {
  const kind = Object.keys(KINDS).find((k) => $(k).contains(document.activeElement)) || lastKind;
  const item = [...event.clipboardData.items].find((i) => i.kind === "file");
  if (!item) {
    say(kind, "The clipboard holds no image. Copy an image first, then paste it here.", true);
    return;
  }
  event.preventDefault();
  const file = item.getAsFile();
  send(kind, file.name ? file : new File([file], "pasted.png", { type: file.type }));
});

// ---------------------------------------------------------------- models, cards and samples

function swatch(color) {
  const node = el("span", undefined, "swatch");
  node.style.background = color;
  return node;
}

// "Test accuracy 94.60% (10000 images); validation accuracy 95.05% (6000 images)."
function scores(card) {
  const splits = ["test", "val"].filter((s) => card.metrics.some((m) => m.split === s));
  return splits.map((split) => {
    const of = card.metrics.filter((m) => m.split === split);
    const values = of.map((m) => `${m.label} ${m.shown}`).join(", ");
    const n = of[0].images ? ` (${of[0].images.toLocaleString("en")} images)` : "";
    return `${SPLIT_NAMES[split]} ${values}${n}`;
  }).join("; ").replace(/^./, (first) => first.toUpperCase()) + ".";
}

// One slot of /api/health -> its card's heading, model line, scores, legend and upload label.
function label(kind, model) {
  ready[kind] = model.ready;
  $(kind + "-model").className = model.ready ? "muted" : "muted error";
  $(kind + "-file").disabled = !model.ready;
  if (!model.ready) {
    $(kind + "-model").textContent = `No model: ${model.error}`;
    return;
  }
  modelNames[kind] = model.name;
  $(kind + "-title").textContent = `${KINDS[kind].title}: ${model.name}`;
  $(kind + "-model").textContent = `Model: ${model.name}, trained on ${model.description}.`;
  if (model.card) {
    $(kind + "-score").hidden = !model.card.metrics.length;
    if (model.card.metrics.length) $(kind + "-score").textContent = scores(model.card);
    $(kind + "-about").hidden = false;
    const where = model.card.shipped ? "shipped with cnnlab" : "a run folder";
    $(kind + "-about-text").textContent = `Recipe ${model.card.recipe} (${where}). Data split: ${model.card.split}.`;
  }
  $(kind + "-legend").replaceChildren(...model.classes.map((name, i) => {
    const item = el("li");
    item.append(swatch(model.colors[i]), " ", name);
    return item;
  }));
  $(kind + "-label").textContent = KINDS[kind].upload(model.classes.length);
  if (kind === "classify") classColors = Object.fromEntries(model.classes.map((name, i) => [name, model.colors[i]]));
}

async function trySample(sample) {
  const response = await fetch("api/samples/" + encodeURIComponent(sample.name));
  if (!response.ok) {
    say(sample.slot, errorSentence(response.status, "", sample.name), true);
    return;
  }
  const blob = await response.blob();
  await send(sample.slot, new File([blob], sample.name, { type: blob.type }), sample);
}

function offerSamples(listed) {
  for (const kind of Object.keys(KINDS)) {
    const mine = listed.samples.filter((s) => s.slot === kind);
    $(kind + "-samples").hidden = !mine.length || !ready[kind];
    $(kind + "-sample-buttons").replaceChildren(...mine.map((sample) => {
      const button = el("button", undefined, "sample");
      button.type = "button";
      button.setAttribute("aria-label", `Try the sample ${sample.title}`);
      const thumb = el("img");
      thumb.src = "api/samples/" + encodeURIComponent(sample.name);
      thumb.alt = "";  // the button's label names it
      button.append(thumb, el("span", sample.title));
      button.addEventListener("click", () => trySample(sample));
      return button;
    }));
    const sources = [...new Set(mine.map((s) => s.source))];
    $(kind + "-samples-source").textContent = sources.length ? `Samples from ${sources.join("; ")}.` : "";
    $(kind + "-samples-absent").hidden = !listed.absent[kind];
    $(kind + "-samples-absent").textContent = listed.absent[kind] || "";
  }
}

async function start() {
  try {
    const health = await (await fetch("api/health")).json();
    Object.assign(limits, health.limits);
    $("limits").textContent = `JPEG, PNG, WebP, GIF, BMP or TIFF, up to ${megabytes(limits.max_upload_bytes)} and ` +
      `${Math.round(limits.max_pixels / 1e6)} megapixels. Images stay on this server only while they are read.`;
    for (const [kind, model] of Object.entries(health.models)) label(kind, model);
    lastKind = ready.classify ? "classify" : "segment";
    offerSamples(await (await fetch("api/samples")).json());
  } catch (error) {
    $("limits").textContent = "The server does not answer. Check that cnnlab serve is still running, then reload.";
  }
}

start();
