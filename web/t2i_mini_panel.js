// Text-to-Image Mini: a live training panel on the Train from Dataset node.
//
// It draws what the `t2i_mini.training` websocket event reports each step (loss raw and smoothed, learning rate,
// step / total, images per second, time left) and the latest validation images (`t2i_mini.validation`). On load it
// asks GET /t2i_mini/runs for this node's newest run and redraws its history, so a page reloaded mid-run shows
// the curve again, and it polls that route while the run goes on without events reaching this page (a reload
// gets a new websocket client, and the server sends the events to the client that queued the prompt) and once
// they stop, to show how the run ended. Stop asks a running run (in the queue or in the background) to save a
// resumable checkpoint and end.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "T2IMiniTrain";
const SMOOTHING = 0.9; // exponential moving average of the loss: the trend through the per-step noise
const POLL_MS = 2000;

// The panel of a graph node, by the id the server's events name it with (a node gets its id from the workflow
// after it is created, so the panel hangs on the node rather than in a table keyed by id).
function panelOf(nodeId) {
  return app.graph?.getNodeById(Number(nodeId))?.t2iMiniPanel;
}

function duration(seconds) {
  if (!isFinite(seconds)) return "-";
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

function viewUrl(image) {
  const query = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder || "", type: image.type });
  return api.apiURL(`/view?${query}`);
}

class Panel {
  constructor(node) {
    this.node = node;
    this.runId = null;
    this.points = [];
    this.total = 0;
    this.status = "";
    this.lastEvent = 0;
    this.element = document.createElement("div");
    this.element.className = "t2i-mini-panel";
    Object.assign(this.element.style, { display: "flex", flexDirection: "column", gap: "4px", width: "100%",
      font: "11px sans-serif", color: "var(--input-text, #ddd)" });
    this.stats = document.createElement("div");
    this.stats.className = "t2i-mini-stats";
    this.stats.textContent = "no training run yet";
    this.canvas = document.createElement("canvas");
    this.canvas.width = 360;
    this.canvas.height = 170;
    Object.assign(this.canvas.style, { width: "100%", background: "rgba(0,0,0,0.25)", borderRadius: "4px" });
    this.gallery = document.createElement("div");
    this.gallery.className = "t2i-mini-validation";
    Object.assign(this.gallery.style, { display: "flex", flexWrap: "wrap", gap: "4px" });
    this.stopButton = document.createElement("button");
    this.stopButton.className = "t2i-mini-stop";
    this.stopButton.textContent = "Stop (save a resumable checkpoint)";
    this.stopButton.style.display = "none";
    this.stopButton.onclick = () => this.stop();
    this.error = document.createElement("div");
    this.error.className = "t2i-mini-error";
    Object.assign(this.error.style, { color: "#f88", whiteSpace: "pre-wrap", overflowWrap: "anywhere" });
    this.element.append(this.stats, this.stopButton, this.error, this.canvas, this.gallery);
    this.element.dataset.points = "0";
  }

  reset(runId, total) {
    this.runId = runId;
    this.total = total || 0;
    this.points = [];
    this.gallery.replaceChildren();
    this.element.dataset.run = runId;
    delete this.element.dataset.validationStep;
  }

  addPoint(point) {
    const last = this.points[this.points.length - 1];
    if (last && point.step <= last.step) return; // a poll and an event can bring the same step
    this.points.push(point);
    this.element.dataset.points = String(this.points.length);
    this.draw();
  }

  setHistory(history) {
    if (history.id !== this.runId) this.reset(history.id, history.total);
    this.status = history.status;
    this.error.textContent = history.error || "";
    for (const p of history.points) this.addPoint(p);
    const latest = history.validations[history.validations.length - 1];
    if (latest) this.showValidation(latest);
    this.draw();
  }

  showValidation(entry) {
    if (Number(this.element.dataset.validationStep) >= entry.step) return;
    this.element.dataset.validationStep = String(entry.step);
    this.gallery.replaceChildren(...entry.images.map((image) => {
      const figure = document.createElement("figure");
      Object.assign(figure.style, { margin: "0", width: "64px", textAlign: "center" });
      const img = document.createElement("img");
      img.src = viewUrl(image);
      img.title = `${image.prompt} (step ${entry.step})`;
      Object.assign(img.style, { width: "64px", height: "64px", imageRendering: "pixelated" });
      const caption = document.createElement("figcaption");
      caption.textContent = image.prompt;
      Object.assign(caption.style, { fontSize: "9px", overflowWrap: "anywhere" });
      figure.append(img, caption);
      return figure;
    }));
    const label = document.createElement("div");
    label.textContent = `validation at step ${entry.step}`;
    label.style.width = "100%";
    this.gallery.prepend(label);
  }

  // Stop asks the run to save and end (POST /t2i_mini/runs/{id}/stop); the route's answer is its new state.
  async stop() {
    if (!this.runId) return;
    this.stopButton.disabled = true;
    try {
      const response = await api.fetchApi(`/t2i_mini/runs/${this.runId}/stop`, { method: "POST" });
      const body = await response.json();
      if (response.ok) this.status = body.status;
      else this.error.textContent = body.error || `stop failed (${response.status})`;
    } catch (error) {
      this.error.textContent = `stop failed: ${error}`;
    }
    this.stopButton.disabled = false;
    this.draw();
    this.poll();
  }

  draw() {
    const running = this.status === "running" || this.status === "stopping";
    this.stopButton.style.display = running ? "" : "none";
    this.stopButton.disabled = this.status === "stopping";
    this.element.dataset.status = this.status;
    const last = this.points[this.points.length - 1];
    if (last) {
      this.stats.textContent = `step ${last.step}/${this.total || last.total || "?"} · loss ${last.loss.toFixed(4)} · ` +
        `lr ${last.lr.toExponential(2)} · ${Math.round(last.images_per_s)} images/s · ${duration(last.eta_s)} left` +
        (this.status && this.status !== "running" ? ` · ${this.status}` : "");
    }
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    const pad = { left: 44, right: 36, top: 8, bottom: 18 };
    ctx.clearRect(0, 0, width, height);
    if (this.points.length < 2) return;
    const losses = this.points.map((p) => p.loss).filter((v) => isFinite(v) && v > 0);
    const lo = Math.min(...losses), hi = Math.max(...losses);
    const log = hi / lo > 10; // a log axis once the loss spans a decade
    const f = (v) => (log ? Math.log10(v) : v);
    const [y0, y1] = [f(lo), f(hi) === f(lo) ? f(lo) + 1 : f(hi)];
    const maxStep = Math.max(this.total || 0, this.points[this.points.length - 1].step);
    const x = (step) => pad.left + (step / maxStep) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - ((f(v) - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
    ctx.strokeStyle = "rgba(200,200,200,0.4)";
    ctx.fillStyle = "rgba(220,220,220,0.9)";
    ctx.font = "10px sans-serif";
    ctx.strokeRect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
    ctx.fillText(hi.toPrecision(3), 2, pad.top + 8);
    ctx.fillText(lo.toPrecision(3), 2, height - pad.bottom);
    ctx.fillText(log ? "loss (log)" : "loss", 2, height / 2);
    ctx.fillText("0", pad.left, height - 4);
    ctx.fillText(String(maxStep), width - pad.right - 24, height - 4);
    const line = (values, color, widthPx, dash = []) => {
      ctx.beginPath();
      ctx.setLineDash(dash);
      ctx.strokeStyle = color;
      ctx.lineWidth = widthPx;
      values.forEach(([step, v], i) => (i ? ctx.lineTo(x(step), y(v)) : ctx.moveTo(x(step), y(v))));
      ctx.stroke();
      ctx.setLineDash([]);
    };
    const raw = this.points.filter((p) => isFinite(p.loss) && p.loss > 0).map((p) => [p.step, p.loss]);
    let ema = null;
    const smooth = raw.map(([step, v]) => [step, (ema = ema === null ? v : SMOOTHING * ema + (1 - SMOOTHING) * v)]);
    line(raw, "rgba(120,170,255,0.35)", 1);
    line(smooth, "rgba(120,170,255,1)", 2);
    // the learning rate on its own scale, from 0 to its peak (right axis)
    const lrMax = Math.max(...this.points.map((p) => p.lr)) || 1;
    const lrY = (v) => height - pad.bottom - (v / lrMax) * (height - pad.top - pad.bottom);
    ctx.beginPath();
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = "rgba(255,190,90,0.9)";
    ctx.lineWidth = 1;
    this.points.forEach((p, i) => (i ? ctx.lineTo(x(p.step), lrY(p.lr)) : ctx.moveTo(x(p.step), lrY(p.lr))));
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "rgba(255,190,90,0.9)";
    ctx.fillText("lr", width - pad.right + 4, pad.top + 8);
    ctx.fillText(lrMax.toExponential(1), width - pad.right + 2, pad.top + 20);
  }

  async refresh() {
    try {
      const response = await api.fetchApi("/t2i_mini/runs");
      if (!response.ok) return;
      const { runs } = await response.json();
      const mine = runs.find((r) => r.node === String(this.node.id));
      if (!mine) return;
      const history = await api.fetchApi(`/t2i_mini/runs/${mine.id}`);
      if (history.ok) this.setHistory(await history.json());
      if (this.status === "running" || this.status === "stopping") this.poll();
    } catch (error) {
      console.warn("T2I Mini: could not read the training history", error);
    }
  }

  poll() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (Date.now() - this.lastEvent > POLL_MS) this.refresh();
      else this.poll();
    }, POLL_MS);
  }
}

app.registerExtension({
  name: "t2i_mini.training_panel",

  async setup() {
    api.addEventListener("t2i_mini.training", ({ detail }) => {
      const panel = panelOf(detail.node);
      if (!panel) return;
      if (panel.runId !== detail.run_id) panel.reset(detail.run_id, detail.total);
      panel.lastEvent = Date.now();
      if (panel.status !== "stopping") panel.status = "running";
      panel.addPoint(detail);
      panel.poll(); // once the events end, the route tells how the run ended
    });
    api.addEventListener("t2i_mini.validation", ({ detail }) => {
      const panel = panelOf(detail.node);
      if (panel && panel.runId === detail.run_id) panel.showValidation(detail);
    });
  },

  async nodeCreated(node) {
    if (node.comfyClass !== NODE_TYPE) return;
    const panel = new Panel(node);
    node.t2iMiniPanel = panel;
    node.addDOMWidget("t2i_mini_training_panel", "t2i_mini_panel", panel.element, { serialize: false,
      getMinHeight: () => 260 });
    const removed = node.onRemoved;
    node.onRemoved = function () {
      clearTimeout(panel.timer);
      return removed?.apply(this, arguments);
    };
    setTimeout(() => panel.refresh(), 0); // after loadGraphData has given the node its id
  },
});

// For tests and other extensions: the panel of a graph node id.
window.t2iMiniPanel = panelOf;
