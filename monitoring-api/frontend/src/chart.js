// A live line chart of one device's metrics (window means), drawn with uPlot.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777"];
const MAX_POINTS = 720;

export class LiveChart {
  constructor(el) {
    this.el = el;
    this.series = new Map(); // metric -> Map(window_start -> mean)
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

  // Seed with bucketed history: [{metric, points: [{t, mean}]}].
  seed(seriesList, bucketSeconds) {
    this.windowSeconds = bucketSeconds;
    for (const s of seriesList) {
      const m = this.metricMap(s.metric);
      for (const p of s.points) if (p.mean !== undefined) m.set(p.t, p.mean);
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
    if (this.windowSeconds === null || w.window_seconds < this.windowSeconds) {
      if (this.windowSeconds !== null) this.series.clear();
      this.windowSeconds = w.window_seconds;
    }
    if (w.window_seconds !== this.windowSeconds) return;
    const m = this.metricMap(w.metric);
    m.set(w.window_start, w.mean);
    if (m.size > MAX_POINTS) m.delete(Math.min(...m.keys()));
    this.render();
  }

  data() {
    const metrics = [...this.series.keys()].sort();
    const ts = new Set();
    for (const m of metrics) for (const t of this.series.get(m).keys()) ts.add(t);
    const xs = [...ts].sort((a, b) => a - b);
    const ys = metrics.map((m) => xs.map((t) => this.series.get(m).get(t) ?? null));
    return { metrics, xs, data: [xs, ...ys] };
  }

  render() {
    const { metrics, xs, data } = this.data();
    this.points = xs.length;
    this.el.dataset.points = String(xs.length);
    this.el.dataset.metrics = metrics.join(",");
    const key = metrics.join("|");
    if (!this.plot || key !== this.metricsKey) {
      if (this.plot) this.plot.destroy();
      this.metricsKey = key;
      const width = Math.max(320, this.el.clientWidth || 640);
      this.plot = new uPlot(
        {
          width,
          height: 280,
          scales: { x: { time: true } },
          series: [
            {},
            ...metrics.map((m, i) => ({
              label: m,
              stroke: COLORS[i % COLORS.length],
              width: 2,
              spanGaps: true,
            })),
          ],
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
