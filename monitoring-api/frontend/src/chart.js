// A line chart of one device's metrics, drawn with uPlot: the mean of each window or bucket,
// with its min–max band shaded behind it; live windows are appended.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777"];
const MAX_POINTS = 720;

export class LiveChart {
  constructor(el) {
    this.el = el;
    this.series = new Map(); // metric -> Map(window_start -> {mean, min, max})
    // A time range fixes the bucket size: pushes of other window sizes are left out.
    this.fixed = false;
    this.plot = null;
    this.metricsKey = "";
    this.windowSeconds = null;
    this.points = 0;
  }

  reset() {
    this.series.clear();
    this.windowSeconds = null;
    this.points = 0;
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.metricsKey = "";
    this.el.dataset.points = "0";
  }

  // Seed with bucketed history: [{metric, points: [{t, mean, min, max}]}]. ``fixed``: the
  // buckets are the chosen range's, kept when finer windows are pushed.
  seed(seriesList, bucketSeconds, fixed = false) {
    this.windowSeconds = bucketSeconds;
    this.fixed = fixed;
    for (const s of seriesList) {
      const m = this.metricMap(s.metric);
      for (const p of s.points) {
        if (p.mean !== undefined && p.mean !== null) {
          m.set(p.t, { mean: p.mean, min: p.min ?? p.mean, max: p.max ?? p.mean });
        }
      }
    }
    this.render();
  }

  metricMap(metric) {
    let m = this.series.get(metric);
    if (!m) {
      m = new Map();
      this.series.set(metric, m);
    }
    return m;
  }

  // One `window` push: the finest window size seen wins (10 s beats 1 min).
  addWindow(w) {
    if (this.fixed && w.window_seconds !== this.windowSeconds) return;
    if (this.windowSeconds === null || w.window_seconds < this.windowSeconds) {
      if (this.windowSeconds !== null) this.series.clear();
      this.windowSeconds = w.window_seconds;
    }
    if (w.window_seconds !== this.windowSeconds) return;
    const m = this.metricMap(w.metric);
    m.set(w.window_start, { mean: w.mean, min: w.min ?? w.mean, max: w.max ?? w.mean });
    if (!this.fixed && m.size > MAX_POINTS) m.delete(Math.min(...m.keys()));
    this.render();
  }

  data() {
    const metrics = [...this.series.keys()].sort();
    const ts = new Set();
    for (const m of metrics) for (const t of this.series.get(m).keys()) ts.add(t);
    const xs = [...ts].sort((a, b) => a - b);
    const ys = [];
    for (const m of metrics) {
      const s = this.series.get(m);
      for (const k of ["mean", "min", "max"]) ys.push(xs.map((t) => s.get(t)?.[k] ?? null));
    }
    return { metrics, xs, data: [xs, ...ys] };
  }

  render() {
    const { metrics, xs, data } = this.data();
    this.points = xs.length;
    this.el.dataset.points = String(xs.length);
    this.el.dataset.metrics = metrics.join(",");
    this.el.dataset.bands = String(metrics.length);
    const key = metrics.join("|");
    if (!this.plot || key !== this.metricsKey) {
      if (this.plot) this.plot.destroy();
      this.metricsKey = key;
      const width = Math.max(200, this.el.clientWidth || 640);
      this.plot = new uPlot(
        {
          width,
          height: 280,
          scales: { x: { time: true } },
          series: [
            {},
            ...metrics.flatMap((m, i) => {
              const color = COLORS[i % COLORS.length];
              const edge = { stroke: `${color}55`, width: 1, spanGaps: true, points: { show: false } };
              return [
                { label: m, stroke: color, width: 2, spanGaps: true },
                { ...edge, label: `${m} min` },
                { ...edge, label: `${m} max` },
              ];
            }),
          ],
          // min–max band per metric: filled between its max (3i+3) and min (3i+2) series
          bands: metrics.map((m, i) => ({
            series: [3 * i + 3, 3 * i + 2],
            fill: `${COLORS[i % COLORS.length]}22`,
          })),
          axes: [{}, {}],
        },
        data,
        this.el,
      );
    } else {
      this.plot.setData(data);
    }
  }
}
