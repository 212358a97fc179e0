// Sparklines: a group's CPU % over the last few minutes, drawn on a small canvas.
// Colours come from CSS custom properties so light and dark themes both apply; call
// theme.read() when the colour scheme changes (theme.version tells painters to redraw).

/** CSS size of a sparkline canvas; style.css gives .spark the same size. */
export const SPARK_WIDTH = 136;
export const SPARK_HEIGHT = 18;
// Below this ceiling a quiet group would look busy: 10 % of a core is the least full scale.
const MIN_CEILING = 10;

export const theme = {
  version: 0,
  line: '#3aa7b5',
  fill: 'rgba(58, 167, 181, 0.18)',
  muted: '#8a94a3',
  base: '#e4e8ee',
  /** Re-read the colours from the page's CSS. */
  read() {
    const css = getComputedStyle(document.documentElement);
    const get = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    this.line = get('--spark-line', this.line);
    this.fill = get('--spark-fill', this.fill);
    this.muted = get('--spark-muted', this.muted);
    this.base = get('--spark-base', this.base);
    this.version += 1;
  },
};

/** Give `canvas` the pixels of a CSS size of `width` x `height` on this screen. */
export function sizeSparkCanvas(canvas, width, height) {
  const dpr = Math.min(3, window.devicePixelRatio || 1);
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
}

/** A canvas sized for this screen's pixel density. */
export function createSparkCanvas() {
  const canvas = document.createElement('canvas');
  sizeSparkCanvas(canvas, SPARK_WIDTH, SPARK_HEIGHT);
  canvas.className = 'spark';
  canvas.setAttribute('aria-hidden', 'true');
  return canvas;
}

/**
 * Draw `hist` (a ring of samples whose oldest is at index `oldest`; NaN = no sample)
 * scaled to max(its peak, 10 %); with `relative`, from its lowest to its highest sample
 * instead (memory: its changes matter more than its distance from zero). Returns
 * {avg, peak} of the samples drawn.
 */
export function drawSparkline(canvas, hist, oldest, muted, { relative = false } = {}) {
  const g = canvas.getContext('2d');
  const w = canvas.width;
  const h = canvas.height;
  const len = hist.length;
  g.clearRect(0, 0, w, h);
  // A baseline over the whole span: the time axis, even before samples fill it.
  const lw = Math.max(1, Math.round(window.devicePixelRatio || 1));
  g.fillStyle = theme.base;
  g.fillRect(0, h - lw, w, lw);
  let peak = 0;
  let low = Infinity;
  let sum = 0;
  let n = 0;
  for (let i = 0; i < len; i += 1) {
    const v = hist[i];
    if (!Number.isNaN(v)) {
      if (v > peak) peak = v;
      if (v < low) low = v;
      sum += v;
      n += 1;
    }
  }
  if (!n) return { avg: NaN, peak: NaN };
  const pad = Math.max(1, Math.round(h / 16)); // keep the line inside the canvas
  const step = len > 1 ? w / (len - 1) : w;
  let y;
  if (relative) {
    // A flat series sits in the middle; a changing one spans the height.
    const span = peak - low;
    y = span > 0 ? (v) => h - pad - ((v - low) / span) * (h - 2 * pad) : () => h / 2;
  } else {
    const ceiling = Math.max(peak, MIN_CEILING);
    y = (v) => h - pad - (v / ceiling) * (h - 2 * pad);
  }
  const line = muted ? theme.muted : theme.line;

  // Runs of consecutive samples; a missing sample breaks the line.
  let start = -1;
  for (let i = 0; i <= len; i += 1) {
    const v = i < len ? hist[(oldest + i) % len] : NaN;
    if (!Number.isNaN(v)) {
      if (start < 0) start = i;
      continue;
    }
    if (start < 0) continue;
    const end = i - 1;
    if (end === start) {
      g.fillStyle = line;
      g.fillRect(start * step - 1, y(hist[(oldest + start) % len]) - 1, 2, 2);
    } else {
      if (!muted) {
        g.beginPath();
        g.moveTo(start * step, h);
        for (let j = start; j <= end; j += 1) g.lineTo(j * step, y(hist[(oldest + j) % len]));
        g.lineTo(end * step, h);
        g.closePath();
        g.fillStyle = theme.fill;
        g.fill();
      }
      g.beginPath();
      for (let j = start; j <= end; j += 1) {
        const x = j * step;
        const yy = y(hist[(oldest + j) % len]);
        if (j === start) g.moveTo(x, yy);
        else g.lineTo(x, yy);
      }
      g.strokeStyle = line;
      g.lineWidth = Math.max(1, window.devicePixelRatio || 1);
      g.lineJoin = 'round';
      g.stroke();
    }
    start = -1;
  }
  return { avg: sum / n, peak };
}
