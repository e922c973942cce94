// The browser page's script (serving/page.py): the champion's graph, run by onnxruntime-web on
// this machine. It loads GET /model/browser.onnx and GET /model (schema, version), builds the
// input from schema.json (a canvas for image-shaped data, a form for a table), answers every
// change here, and on request asks POST /predict for the same record to show both answers and
// both latencies. A promotion is picked up within POLL_MS: the page says which version answered.
// `window.mlcycle` lets a test run the browser's graph on encoded rows.

const ORT = document.querySelector('meta[name="ort"]').content;
const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

let ort = null;
let model = null; // {version, schema, session, bytes, coverage}
let current = null; // the record on screen: {feature name: value as the server takes it}
let loading = null; // the model load in progress, if any

function showStatus(text, error = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

async function fetchModel() {
  // The graph first: its header names its version; then the schema of that same version.
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const graph = await fetch("/model/browser.onnx", { cache: "no-cache" });
    if (!graph.ok) throw new Error(`GET /model/browser.onnx: ${graph.status} ${await graph.text()}`);
    const version = graph.headers.get("x-model-version");
    const bytes = new Uint8Array(await graph.arrayBuffer());
    const info = await (await fetch("/model", { cache: "no-cache" })).json();
    if (info.version !== version) continue; // a promotion between the two requests
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    const coverage = info.export?.interval?.coverage ?? null;
    return { version, schema: info.schema, session, bytes: bytes.length, coverage };
  }
  throw new Error("the champion kept changing while the page loaded it");
}

function encode(schema, record) {
  // As the service encodes a request (serving/requests.py): numbers as given, a missing value
  // as NaN (the graph imputes it), a category as its index in the schema's categories.
  const features = schema.features;
  const row = new Float32Array(features.length);
  features.forEach((f, j) => {
    const v = record[f.name];
    if (v === null || v === undefined || v === "") row[j] = NaN;
    else if (f.kind === "categorical") row[j] = f.categories.indexOf(v);
    else row[j] = Number(v);
  });
  return row;
}

async function runEncoded(rows, n) {
  // The graph on n encoded rows (a Float32Array of n x features): the task's outputs.
  const width = model.schema.features.length;
  const start = performance.now();
  const out = await model.session.run({ features: new ort.Tensor("float32", rows, [n, width]) });
  const ms = performance.now() - start;
  const task = model.schema.task;
  if (task === "regression") {
    return {
      ms,
      version: model.version,
      prediction: Array.from(out.prediction.data),
      lower: Array.from(out.lower.data),
      upper: Array.from(out.upper.data),
    };
  }
  const k = model.schema.target.classes.length;
  const probs = out.probabilities.data;
  const probabilities = [];
  for (let i = 0; i < n; i += 1) probabilities.push(Array.from(probs.slice(i * k, (i + 1) * k)));
  const labels = Array.from(out.label.data, (v) => model.schema.target.classes[Number(v)]);
  return { ms, version: model.version, probabilities, labels };
}

function render(target, answer, ms, version) {
  const body = $(target).querySelector(".body");
  body.replaceChildren();
  const add = (tag, cls, text) => {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    el.textContent = text;
    body.append(el);
    return el;
  };
  if ("prediction" in answer) {
    add("div", "label", answer.prediction.toPrecision(5));
    const cov = model.coverage ? ` (${Math.round(model.coverage * 100)} % interval)` : "";
    add("div", "", `[${answer.lower.toPrecision(5)}, ${answer.upper.toPrecision(5)}]${cov}`);
  } else {
    add("div", "label", String(answer.label));
    const classes = model.schema.target.classes;
    answer.probabilities.forEach((p, c) => {
      const bar = add("div", "bar", "");
      const name = document.createElement("span");
      name.textContent = `${classes[c]}`;
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${Math.max(1, p * 120)}px`;
      const value = document.createElement("span");
      value.textContent = p.toFixed(4);
      bar.append(name, fill, value);
    });
  }
  add("div", "meta", `version ${version} · ${ms.toFixed(2)} ms`);
  $(target).dataset.version = version;
  $(target).dataset.answer = JSON.stringify(answer);
}

let answering = Promise.resolve(); // answers in the order of the changes that asked for them

function answerHere() {
  answering = answering
    .then(answerCurrent)
    .catch((err) => showStatus(`the browser could not answer: ${err.message}`, true));
  return answering;
}

async function answerCurrent() {
  if (!model || !current) return;
  const got = await runEncoded(encode(model.schema, current), 1);
  const one =
    "prediction" in got
      ? { prediction: got.prediction[0], lower: got.lower[0], upper: got.upper[0] }
      : { label: got.labels[0], probabilities: got.probabilities[0] };
  render("browser-answer", one, got.ms, got.version);
}

async function askServer() {
  if (!current) return;
  const start = performance.now();
  const res = await fetch("/predict", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ records: [current] }),
  });
  const ms = performance.now() - start;
  const body = await res.json();
  if (!res.ok) {
    showStatus(`POST /predict: ${res.status}: ${body.error}`, true);
    return;
  }
  render("server-answer", body.predictions[0], ms, body.model_version);
}

// Image-shaped data: a canvas drawn on, downsampled as scikit-learn's digits were made (a
// bitmap four times finer than the image; each cell counts its block's inked pixels, 0-16),
// scaled to the features' range.
const ink = { drawing: false, last: null };

function setUpCanvas(schema) {
  const [h, w] = schema.image_shape;
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const clear = () => {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    current = null;
    drawPreview(new Float32Array(h * w), h, w, 1);
  };
  clear();
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [
      ((e.clientX - r.left) * canvas.width) / r.width,
      ((e.clientY - r.top) * canvas.height) / r.height,
    ];
  };
  canvas.addEventListener("pointerdown", (e) => {
    ink.drawing = true;
    ink.last = at(e);
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!ink.drawing) return;
    const p = at(e);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = canvas.width / w / 1.3;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(...ink.last);
    ctx.lineTo(...p);
    ctx.stroke();
    ink.last = p;
  });
  const finish = () => {
    if (!ink.drawing) return;
    ink.drawing = false;
    current = imageRecord(schema, ctx, canvas, h, w);
    answerHere();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  $("clear").addEventListener("click", clear);
  $("drawing").hidden = false;
}

function imageRecord(schema, ctx, canvas, h, w) {
  const fine = 4; // bitmap pixels per cell side
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const sy = canvas.height / (h * fine);
  const sx = canvas.width / (w * fine);
  const top = Math.max(...schema.features.map((f) => f.max ?? 16));
  const values = new Float32Array(h * w);
  for (let by = 0; by < h * fine; by += 1) {
    for (let bx = 0; bx < w * fine; bx += 1) {
      let dark = 0;
      let count = 0;
      for (let y = Math.floor(by * sy); y < Math.floor((by + 1) * sy); y += 1) {
        for (let x = Math.floor(bx * sx); x < Math.floor((bx + 1) * sx); x += 1) {
          dark += 255 - pixels[(y * canvas.width + x) * 4];
          count += 1;
        }
      }
      if (dark / count > 127) values[Math.floor(by / fine) * w + Math.floor(bx / fine)] += 1;
    }
  }
  const record = {};
  schema.features.forEach((f, j) => {
    record[f.name] = (values[j] * top) / (fine * fine);
  });
  drawPreview(values, h, w, fine * fine);
  return record;
}

function drawPreview(values, h, w, top) {
  const preview = $("preview");
  const ctx = preview.getContext("2d");
  const cell = preview.width / w;
  values.forEach((v, j) => {
    const shade = Math.round(255 * (1 - v / top));
    ctx.fillStyle = `rgb(${shade},${shade},${shade})`;
    ctx.fillRect((j % w) * cell, Math.floor(j / w) * cell, cell, (cell * w) / h);
  });
}

// A table: a form built from schema.json, starting at each feature's middle (the most common
// category), answered on every change.
function setUpForm(schema) {
  const form = $("form");
  form.replaceChildren();
  const read = () => {
    const record = {};
    schema.features.forEach((f) => {
      const field = form.elements.namedItem(f.name);
      if (f.kind === "categorical") record[f.name] = f.categories[Number(field.value)];
      else record[f.name] = field.value === "" ? null : Number(field.value);
    });
    return record;
  };
  schema.features.forEach((f) => {
    const label = document.createElement("label");
    label.textContent = f.name;
    label.htmlFor = `f-${f.name}`;
    let field;
    if (f.kind === "categorical") {
      field = document.createElement("select");
      f.categories.forEach((c, i) => field.append(new Option(String(c), String(i))));
    } else {
      field = document.createElement("input");
      field.type = "number";
      field.step = "any";
      if (f.min !== null && f.max !== null) {
        field.min = f.min;
        field.max = f.max;
        field.value = String((f.min + f.max) / 2);
      }
    }
    field.id = `f-${f.name}`;
    field.name = f.name;
    form.append(label, field);
  });
  form.addEventListener("input", () => {
    current = read();
    answerHere();
  });
  current = read();
  form.hidden = false;
}

async function load() {
  const next = await fetchModel();
  const first = model === null;
  model = next;
  const kb = (model.bytes / 1024).toFixed(0);
  showStatus(`version ${model.version} · ${kb} KB graph · onnxruntime-web (wasm) in this browser`);
  if (first) {
    if (model.schema.image_shape && model.schema.image_shape.length === 2) setUpCanvas(model.schema);
    else setUpForm(model.schema);
    $("ask").disabled = false;
  }
  await answerHere();
}

async function poll() {
  // A revalidation: while the graph is current the server answers 304 (a few hundred bytes)
  // and the cached copy stands; a new version is loaded.
  try {
    const head = await fetch("/model/browser.onnx", { cache: "no-cache" });
    if (head.ok && model && head.headers.get("x-model-version") !== model.version && !loading) {
      loading = load().finally(() => {
        loading = null;
      });
      await loading;
    }
  } catch (err) {
    showStatus(`the server is unreachable (${err.message}); answering with version ${model?.version}`, true);
  }
  setTimeout(poll, POLL_MS);
}

async function main() {
  ort = await import(`${ORT}ort.wasm.bundle.min.mjs`);
  ort.env.wasm.wasmPaths = ORT;
  ort.env.wasm.numThreads = 1; // no cross-origin isolation needed; one record is sub-millisecond
  await load();
  $("ask").addEventListener("click", askServer);
  setTimeout(poll, POLL_MS);
}

const ready = main();
ready.catch((err) => showStatus(`the page could not load the model: ${err.message}`, true));

window.mlcycle = {
  ready,
  version: () => model?.version,
  settled: () => answering, // the answer to the latest change is on screen
  record: () => current,
  // The browser's graph on encoded rows (arrays of numbers in schema order, null = missing).
  run: async (rows) => {
    await ready;
    const width = model.schema.features.length;
    const flat = new Float32Array(rows.length * width);
    rows.forEach((row, i) => row.forEach((v, j) => {
      flat[i * width + j] = v === null ? NaN : v;
    }));
    return runEncoded(flat, rows.length);
  },
};
