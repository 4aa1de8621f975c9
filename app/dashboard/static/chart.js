/* A small SVG line chart for metric curves: no library, redrawn whole on every update. */
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 960;
  const HEIGHT = 320;
  const PAD = { left: 56, right: 16, top: 16, bottom: 36 };

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) {
      node.setAttribute(k, attrs[k]);
    });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Round numbers for axis ticks (1, 2, 5 x 10^n).
  function niceTicks(min, max, count) {
    if (!(max > min)) return [min];
    const raw = (max - min) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(function (m) {
      return m * mag;
    }).find(function (s) {
      return s >= raw;
    });
    const ticks = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(v);
    return ticks;
  }

  // As many decimals as the tick step needs (0.690, 0.692, ...; 50%, 60%, ...).
  function formatTick(v, percent, step) {
    const value = percent ? v * 100 : v;
    const unit = percent ? step * 100 : step;
    const decimals = unit > 0 ? Math.min(6, Math.max(0, Math.ceil(-Math.log10(unit) - 1e-9))) : 2;
    return (Math.abs(value) < 1e-12 ? "0" : value.toFixed(decimals)) + (percent ? "%" : "");
  }

  /**
   * Draw `series` ([{name, cls, points: [[step, value], ...]}]) into `svg`, x from 1 to
   * `totalSteps` (or the last step seen). The svg carries `data-points-<cls>` counts, which is
   * what tests read to see the curve grow. `options.percent` shows values (0..1) as percentages;
   * the y axis starts at 0 unless a value is negative (a DPO reward margin can be).
   * `options.width` / `options.height` size the drawing (a half-width chart wants fewer units,
   * so that its text stays readable).
   */
  function draw(svg, series, totalSteps, options) {
    options = options || {};
    const percent = !!options.percent;
    const W = options.width || WIDTH;
    const H = options.height || HEIGHT;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);

    const all = [];
    series.forEach(function (s) {
      svg.setAttribute("data-points-" + s.cls, String(s.points.length));
      s.points.forEach(function (p) {
        if (Number.isFinite(p[1])) all.push(p);
      });
    });
    const plotW = W - PAD.left - PAD.right;
    const plotH = H - PAD.top - PAD.bottom;
    if (all.length === 0) {
      svg.appendChild(
        el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" },
          "Waiting for the first training step\u2026")
      );
      return;
    }
    const maxStep = Math.max(totalSteps || 0, Math.max.apply(null, all.map(function (p) {
      return p[0];
    })), 2);
    let lo = Math.min.apply(null, all.map(function (p) { return p[1]; }));
    let hi = Math.max.apply(null, all.map(function (p) { return p[1]; }));
    if (hi - lo < 1e-9) {
      lo -= 0.5;
      hi += 0.5;
    }
    const margin = (hi - lo) * 0.08;
    lo = lo >= 0 ? Math.max(0, lo - margin) : lo - margin;
    hi += margin;

    const x = function (step) {
      return PAD.left + ((step - 1) / (maxStep - 1)) * plotW;
    };
    const y = function (v) {
      return PAD.top + (1 - (v - lo) / (hi - lo)) * plotH;
    };

    const grid = el("g", { class: "chart-grid" });
    const yTicks = niceTicks(lo, hi, 4);
    const yStep = yTicks.length > 1 ? yTicks[1] - yTicks[0] : 0;
    yTicks.forEach(function (t) {
      grid.appendChild(el("line", { x1: PAD.left, x2: W - PAD.right, y1: y(t), y2: y(t) }));
      grid.appendChild(el("text", { x: PAD.left - 8, y: y(t) + 4, "text-anchor": "end" }, formatTick(t, percent, yStep)));
    });
    niceTicks(1, maxStep, 6).forEach(function (t) {
      if (t < 1 || Math.abs(t - Math.round(t)) > 1e-9) return; // steps are whole numbers
      t = Math.round(t);
      grid.appendChild(el("line", { x1: x(t), x2: x(t), y1: PAD.top, y2: H - PAD.bottom, class: "v" }));
      grid.appendChild(el("text", { x: x(t), y: H - PAD.bottom + 16, "text-anchor": "middle" }, String(t)));
    });
    grid.appendChild(el("text", { x: PAD.left + plotW / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, "step"));
    svg.appendChild(grid);

    series.forEach(function (s) {
      const pts = s.points.filter(function (p) { return Number.isFinite(p[1]); });
      if (pts.length === 0) return;
      const g = el("g", { class: "series " + s.cls });
      g.appendChild(el("polyline", {
        points: pts.map(function (p) { return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); }).join(" "),
      }));
      // Dots (with a tooltip) only while they stay readable.
      if (pts.length <= 120 || s.sparse) {
        pts.forEach(function (p) {
          const dot = el("circle", { cx: x(p[0]), cy: y(p[1]), r: s.sparse ? 3.5 : 2.5 });
          const value = percent ? (100 * p[1]).toFixed(1) + "%" : p[1].toFixed(4);
          dot.appendChild(el("title", {}, s.name + " at step " + p[0] + ": " + value));
          g.appendChild(dot);
        });
      }
      svg.appendChild(g);
    });
  }

  window.TunaChart = { draw: draw };
})();
