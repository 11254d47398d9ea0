// A live plot on a plain canvas: the sentiment after every step (a point coloured by the modality
// the step fused, on a line through all of them) and, below it, each step's gate.

export const COLOURS = { text: "#d9480f", audio: "#1971c2", video: "#2f9e44" };
const OTHER = "#868e96";
const SPAN_S = 60;  // seconds shown; older points scroll out
const RANGE = 3;  // sentiment runs from -3 to +3
const BAR_OFFSET = { video: -3, audio: 0, text: 3 };

export class Plot {
  constructor(canvas) {
    this.canvas = canvas;
    this.points = [];  // {t, value, gate, modality}
    this.drawn = 0;  // points on screen after the last draw
    this.pending = false;
  }

  add(point) {
    this.points.push(point);
    if (!this.pending) {  // at most one draw per frame however fast steps come
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }
  }

  clear() {
    this.points = [];
    this.draw();
  }

  draw() {
    const { ctx, width, height } = this.surface();
    const sentiment = { top: 10, height: height * 0.68 - 10 };
    const gates = { top: height * 0.74, height: height * 0.26 - 18 };
    const end = Math.max(SPAN_S, this.points.length ? this.points[this.points.length - 1].t : 0);
    const x = (t) => 40 + ((t - (end - SPAN_S)) / SPAN_S) * (width - 50);
    const shown = this.points.filter((p) => p.t >= end - SPAN_S);
    ctx.clearRect(0, 0, width, height);
    this.axes(ctx, width, sentiment, gates, end, x);
    const y = (v) => sentiment.top + ((RANGE - Math.max(-RANGE, Math.min(RANGE, v))) / (2 * RANGE)) * sentiment.height;
    ctx.strokeStyle = "#adb5bd";
    ctx.beginPath();
    shown.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.value)) : ctx.moveTo(x(p.t), y(p.value))));
    ctx.stroke();
    for (const p of shown) {  // video steps come with audio steps: a square, a dot and side-by-side bars
      ctx.fillStyle = COLOURS[p.modality] || OTHER;
      mark(ctx, p.modality, x(p.t), y(p.value));
      const bar = Math.max(1, p.gate * gates.height);
      ctx.fillRect(x(p.t) + (BAR_OFFSET[p.modality] || 0) - 1, gates.top + gates.height - bar, 2.5, bar);
    }
    this.drawn = shown.length;
  }

  surface() {  // sharp on high-density screens: draw at device pixels, in CSS pixel units
    const scale = window.devicePixelRatio || 1;
    const { width, height } = this.canvas.getBoundingClientRect();
    if (this.canvas.width !== Math.round(width * scale)) {
      this.canvas.width = Math.round(width * scale);
      this.canvas.height = Math.round(height * scale);
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
    return { ctx, width, height };
  }

  axes(ctx, width, sentiment, gates, end, x) {
    ctx.font = "11px sans-serif";
    ctx.fillStyle = "#495057";
    ctx.strokeStyle = "#e9ecef";
    for (let v = -RANGE; v <= RANGE; v++) {
      const y = sentiment.top + ((RANGE - v) / (2 * RANGE)) * sentiment.height;
      ctx.strokeStyle = v === 0 ? "#ced4da" : "#f1f3f5";
      ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(width - 10, y); ctx.stroke();
      ctx.fillText(v > 0 ? `+${v}` : `${v}`, 12, y + 4);
    }
    ctx.fillText("gate", 8, gates.top + gates.height / 2 + 4);
    ctx.strokeStyle = "#ced4da";
    ctx.strokeRect(40, gates.top, width - 50, gates.height);
    for (let t = Math.ceil((end - SPAN_S) / 10) * 10; t <= end; t += 10) {
      ctx.fillText(`${t} s`, x(t) - 8, gates.top + gates.height + 14);
    }
  }
}

function mark(ctx, modality, x, y) {  // video a square, audio a dot, text a larger diamond
  ctx.beginPath();
  if (modality === "video") ctx.rect(x - 4.5, y - 4.5, 9, 9);
  else if (modality === "text") [[0, -7], [7, 0], [0, 7], [-7, 0]].forEach(([dx, dy]) => ctx.lineTo(x + dx, y + dy));
  else ctx.arc(x, y, 3.5, 0, 2 * Math.PI);
  ctx.fill();
}
