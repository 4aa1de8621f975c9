/* Tuna dashboard: a hash-routed single page over the /v1 API (jobs, files, new job, evals, webhooks, playground). */
"use strict";

(function () {
  const api = window.TunaApi;
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const view = document.getElementById("view");

  // ---- small DOM helpers (text is always set as text, never parsed as HTML) ----------------

  function h(tag, attrs) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      const v = attrs[k];
      if (v === undefined || v === null || v === false) return;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v === true) node.setAttribute(k, "");
      else node.setAttribute(k, v);
    });
    for (let i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function append(node, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { append(node, c); });
    else node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function when(ts) {
    if (!ts) return "\u2013";
    const d = new Date(ts * 1000);
    const pad = function (n) { return String(n).padStart(2, "0"); };
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function bytes(n) {
    if (n === undefined || n === null) return "\u2013";
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function duration(seconds) {
    if (!(seconds >= 0)) return "\u2013";
    seconds = Math.round(seconds);
    const m = Math.floor(seconds / 60), s = seconds % 60, hrs = Math.floor(m / 60);
    return hrs ? hrs + "h " + (m % 60) + "m" : m ? m + "m " + s + "s" : s + "s";
  }

  function badge(status) {
    return h("span", { class: "badge status-" + status, "data-status": status, text: status.replace("_", " ") });
  }

  // ---- training methods and their metrics ---------------------------------------------------

  // Each method's metric names and their keys in a metrics event, per split, from
  // tuna_core.metrics (served as /dashboard/metrics.js): {dpo: {metrics: [...], train: [...]}}.
  const METRICS = window.TUNA_METRICS || {};
  // Charted and summarized beside loss, per method (names from METRICS; supervised: loss only).
  const EXTRA_METRICS = { dpo: ["reward_accuracy", "reward_margin"] };
  const METHOD_LABELS = { supervised: "Supervised", dpo: "DPO" };

  function jobMethod(job) {
    return (job.method && job.method.type) || "supervised";
  }

  /** `method.<type>.hyperparameters` of a job ({} when absent). */
  function methodHyperparameters(job) {
    const method = job.method || {};
    return (method[jobMethod(job)] || {}).hyperparameters || {};
  }

  /** The key of `name` in a metrics event for `split` ("train_loss"), or null if unknown. */
  function metricKey(method, split, name) {
    const m = METRICS[method];
    const i = m ? m.metrics.indexOf(name) : -1;
    return i === -1 ? null : m[split][i];
  }

  function extraMetrics(method) {
    return (EXTRA_METRICS[method] || []).filter(function (name) { return metricKey(method, "train", name); });
  }

  function metricLabel(name) {
    const text = name.replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function formatMetric(name, value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "\u2013";
    return /accuracy$/.test(name) ? (100 * value).toFixed(1) + "%" : value.toFixed(4);
  }

  function methodTag(job) {
    const method = jobMethod(job);
    if (method === "supervised") return null;
    const beta = methodHyperparameters(job).beta;
    const text = (METHOD_LABELS[method] || method) + (beta !== undefined ? " \u00b7 \u03b2 " + beta : "");
    return h("span", { class: "tag method-" + method, "data-method": method, text: text });
  }

  function toast(message, kind) {
    const t = document.getElementById("toast");
    t.textContent = message;
    t.className = "toast " + (kind || "");
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.hidden = true; }, 3500);
  }

  function errorBox(message) {
    return h("div", { class: "alert error", role: "alert" }, message);
  }

  // "Invalid training file: 2 line(s) have errors. Line 3: ... Line 9: ..." -> one line each.
  function validationReport(message) {
    const parts = message.split(/\s+(?=Line \d+: )/);
    if (parts.length === 1) return errorBox(message);
    return h("div", { class: "alert error validation", role: "alert" },
      h("strong", { text: parts[0] }),
      h("ul", {}, parts.slice(1).map(function (p) { return h("li", { text: p }); })));
  }

  function copyButton(text) {
    return h("button", {
      type: "button", class: "copy", title: "Copy to clipboard", "data-copy": text,
      onclick: function () { copyText(text); },
    }, "Copy");
  }

  function copyText(text) {
    const done = function () { toast("Copied " + text); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else {
      fallbackCopy(text);
      done();
    }
  }

  function fallbackCopy(text) {
    const area = h("textarea", { class: "offscreen" });
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    document.body.removeChild(area);
  }

  // ---- routing ----------------------------------------------------------------------------

  let cleanup = [];
  function onLeave(fn) { cleanup.push(fn); }

  /** Poll `fn` every `ms` until the page changes; never two polls at once. */
  function every(ms, fn) {
    let stopped = false, timer = null;
    const tick = async function () {
      if (stopped) return;
      try { await fn(); } catch (e) { console.error(e); }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    onLeave(function () { stopped = true; clearTimeout(timer); });
    tick();
  }

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, qs] = raw.split("?");
    return { parts: path ? path.split("/").map(decodeURIComponent) : [], params: new URLSearchParams(qs || "") };
  }

  function route() {
    cleanup.forEach(function (fn) { fn(); });
    cleanup = [];
    clear(view);
    const signedIn = !!api.getKey();
    document.getElementById("topbar").hidden = !signedIn;
    const { parts, params } = parseHash();
    if (!signedIn) return signInPage();
    const key = api.getKey();
    document.getElementById("key-hint").textContent = key.length > 12 ? key.slice(0, 8) + "\u2026" + key.slice(-4) : "key set";
    const page = parts[0] || "jobs";
    document.querySelectorAll("[data-nav]").forEach(function (a) {
      a.classList.toggle("active", a.dataset.nav === page);
    });
    if (page === "jobs" && parts[1]) return jobPage(parts[1]);
    if (page === "jobs") return jobsPage();
    if (page === "files") return filesPage();
    if (page === "new") return newJobPage(params);
    if (page === "evals" && parts[1] && parts[2] === "runs" && parts[3]) return evalRunItemsPage(parts[1], parts[3], params);
    if (page === "evals" && parts[1]) return evalPage(parts[1], params);
    if (page === "evals") return evalsPage();
    if (page === "webhooks" && parts[1]) return webhookPage(parts[1]);
    if (page === "webhooks") return webhooksPage();
    if (page === "playground") return playgroundPage(params);
    view.appendChild(h("section", { class: "card" }, h("h1", { text: "Not found" }),
      h("p", {}, h("a", { href: "#/jobs", text: "Back to jobs" }))));
  }

  window.addEventListener("hashchange", route);
  window.addEventListener("tuna:unauthorized", function () {
    api.setKey(null);
    toast("That API key was refused; sign in again.", "error");
    route();
  });
  document.getElementById("sign-out").addEventListener("click", function () {
    api.setKey(null);
    location.hash = "#/jobs";
    route();
  });

  // ---- sign in ----------------------------------------------------------------------------

  function signInPage() {
    const input = h("input", {
      type: "password", id: "api-key", name: "api-key", autocomplete: "off", required: true,
      placeholder: "sk-tuna-\u2026", autofocus: true,
    });
    const message = h("div", {});
    const form = h("form", {
      class: "card signin", id: "signin-form",
      onsubmit: async function (e) {
        e.preventDefault();
        clear(message);
        const key = input.value.trim();
        try {
          await api.verifyKey(key);
        } catch (err) {
          message.appendChild(errorBox(err.message));
          return;
        }
        api.setKey(key);
        route();
      },
    },
      h("h1", {}, h("span", { class: "brand-mark" }, "\u25CF"), " Tuna"),
      h("p", { class: "muted", text: "Sign in with an API key. `tuna serve` prints one on first start; `tuna keys create --project NAME` makes more." }),
      h("label", { for: "api-key", text: "API key" }),
      input,
      message,
      h("button", { type: "submit", class: "primary", text: "Sign in" }),
      h("p", { class: "muted small", text: "The key stays in this browser (localStorage) and is sent as a Bearer token." }));
    view.appendChild(h("div", { class: "center" }, form));
    input.focus();
  }

  // ---- jobs list --------------------------------------------------------------------------

  // The newest metrics event tells step/total; finished jobs never change, so cache theirs.
  const finishedProgress = new Map();

  async function latestMetrics(job) {
    if (finishedProgress.has(job.id)) return finishedProgress.get(job.id);
    const page = await api.get("/v1/fine_tuning/jobs/" + job.id + "/events", { limit: 25 });
    const m = page.data.find(function (e) { return e.type === "metrics" && e.data; });
    const result = m ? m.data : null;
    if (TERMINAL.includes(job.status)) finishedProgress.set(job.id, result);
    return result;
  }

  function progressCell(metrics, status) {
    if (!metrics || !metrics.total_steps) return h("span", { class: "muted", text: status === "succeeded" ? "done" : "\u2013" });
    const pct = Math.min(100, (100 * metrics.step) / metrics.total_steps);
    return h("div", { class: "mini-progress" },
      h("div", { class: "track" }, h("div", { class: "fill status-" + status, style: "width:" + pct.toFixed(1) + "%" })),
      h("span", { class: "steps", text: metrics.step + "/" + metrics.total_steps }));
  }

  function jobsPage() {
    const body = h("tbody", {});
    const status = h("p", { class: "muted small" });
    view.appendChild(h("section", { class: "card" },
      h("div", { class: "card-head" },
        h("h1", { text: "Fine-tuning jobs" }),
        h("a", { class: "button primary", href: "#/new", text: "New job" })),
      h("table", { class: "table", id: "jobs-table" },
        h("thead", {}, h("tr", {}, ["ID", "Model", "Status", "Progress", "Created", "Fine-tuned model"].map(function (c) {
          return h("th", { text: c });
        }))),
        body),
      status));
    every(3000, async function () {
      const page = await api.get("/v1/fine_tuning/jobs", { limit: 50 });
      const progress = await Promise.all(page.data.map(function (job) {
        return latestMetrics(job).catch(function () { return null; });
      }));
      clear(body);
      if (page.data.length === 0) {
        body.appendChild(h("tr", {}, h("td", { colspan: 6, class: "empty" },
          "No jobs yet. ", h("a", { href: "#/files", text: "Upload a dataset" }), ", then ",
          h("a", { href: "#/new", text: "start a job" }), ".")));
      }
      page.data.forEach(function (job, i) {
        body.appendChild(h("tr", { "data-job-id": job.id },
          h("td", {}, h("a", { href: "#/jobs/" + job.id, class: "mono", text: job.id })),
          h("td", {}, job.model, " ", methodTag(job)),
          h("td", {}, badge(job.status)),
          h("td", {}, progressCell(progress[i], job.status)),
          h("td", { class: "nowrap", text: when(job.created_at) }),
          h("td", { class: "mono small" }, job.fine_tuned_model || "\u2013")));
      });
      status.textContent = "Refreshed " + new Date().toLocaleTimeString() + " \u00b7 updates every 3 s";
    });
  }

  // ---- one job ----------------------------------------------------------------------------

  function jobPage(jobId) {
    // series[name] = {train: [[step, value]], valid: [...]}; byStep: each step's metrics data.
    const state = { seen: new Set(), events: [], series: {}, byStep: new Map(), latest: null, job: null, method: null };
    const header = h("div", { class: "card-head" });
    const summary = h("div", { class: "summary" });
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("id", "loss-chart");
    svg.setAttribute("class", "chart");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "Training and validation loss by step");
    const details = h("dl", { class: "details" });
    const hyper = h("dl", { class: "details" });
    const checkpointsHead = h("tr", {});
    const checkpoints = h("tbody", {});
    const methodCharts = h("div", { class: "wide chart-row", id: "method-charts", hidden: true });
    const charts = []; // the method's extra charts: {name, svg}
    const eventList = h("ol", { class: "events", id: "events" });
    const showMetrics = h("input", { type: "checkbox", id: "show-metrics", onchange: function () { renderEvents(); } });
    const errorArea = h("div", {});
    // The automatic comparison on the validation set (the job's `eval`), once the job made one.
    const comparisonEval = h("span", { class: "small muted", id: "comparison-eval" });
    const comparisonNote = h("p", { class: "muted small", id: "comparison-note" });
    const comparisonBody = h("tbody", {});
    const comparison = h("section", { class: "card", id: "comparison", hidden: true },
      h("div", { class: "card-head" }, h("h2", { text: "Comparison on the validation set" }), comparisonEval),
      comparisonNote,
      h("table", { class: "table", id: "comparison-table" },
        h("thead", {}, h("tr", {}, ["Model", "Model id", "Status", "Exact match", "Similarity", "Valid loss", ""].map(function (c) {
          return h("th", { text: c });
        }))),
        comparisonBody));

    view.appendChild(h("section", { class: "card" }, header, errorArea, summary));
    view.appendChild(comparison);
    view.appendChild(h("div", { class: "grid" },
      h("section", { class: "card wide" },
        h("div", { class: "card-head" }, h("h2", { text: "Loss" }),
          h("div", { class: "legend" },
            h("span", { class: "swatch train" }), "train loss",
            h("span", { class: "swatch valid" }), "validation loss")),
        svg),
      methodCharts,
      h("section", { class: "card" }, h("h2", { text: "Details" }), details),
      h("section", { class: "card" }, h("h2", { text: "Hyperparameters" }), hyper),
      h("section", { class: "card wide" }, h("h2", { text: "Checkpoints" }),
        h("table", { class: "table", id: "checkpoints" }, h("thead", {}, checkpointsHead), checkpoints)),
      h("section", { class: "card wide" },
        h("div", { class: "card-head" }, h("h2", { text: "Events" }),
          h("label", { class: "inline small muted" }, showMetrics, " show metrics events")),
        eventList)));
    TunaChart.draw(svg, [], 0);
    const SMALL_CHART = { width: 480, height: 240 }; // the method's charts, two to a row

    function series(name) {
      if (!state.series[name]) state.series[name] = { train: [], valid: [] };
      return state.series[name];
    }

    // Once the job is known: its method decides which metrics are read and charted.
    function setMethod(job) {
      if (state.method) return;
      state.method = jobMethod(job);
      extraMetrics(state.method).forEach(function (name) {
        const chart = document.createElementNS("http://www.w3.org/2000/svg", "svg");
        const id = name.replace(/_/g, "-") + "-chart";
        chart.setAttribute("id", id);
        chart.setAttribute("class", "chart");
        chart.setAttribute("role", "img");
        chart.setAttribute("aria-label", "Training and validation " + name.replace(/_/g, " ") + " by step");
        methodCharts.appendChild(h("section", { class: "card" },
          h("div", { class: "card-head" }, h("h2", { text: metricLabel(name) }),
            h("div", { class: "legend" },
              h("span", { class: "swatch train" }), "train",
              h("span", { class: "swatch valid" }), "validation")),
          chart));
        TunaChart.draw(chart, [], 0, SMALL_CHART);
        charts.push({ name: name, svg: chart });
      });
      methodCharts.hidden = charts.length === 0;
    }

    function addMetrics(d) {
      // Every method reports loss; one this page does not know is read under supervised's names.
      const method = METRICS[state.method] ? state.method : "supervised";
      ["loss"].concat(extraMetrics(method)).forEach(function (name) {
        const train = d[metricKey(method, "train", name)];
        const valid = d[metricKey(method, "valid", name)];
        if (train !== undefined) series(name).train.push([d.step, train]);
        if (valid !== undefined) series(name).valid.push([d.step, valid]);
      });
      state.byStep.set(d.step, d);
      if (!state.latest || d.step >= state.latest.step) state.latest = d;
    }

    function drawCharts() {
      const total = state.latest && state.latest.total_steps;
      const loss = series("loss");
      TunaChart.draw(svg, [
        { name: "train loss", cls: "train", points: loss.train },
        { name: "validation loss", cls: "valid", points: loss.valid, sparse: true },
      ], total);
      charts.forEach(function (c) {
        const s = series(c.name), label = c.name.replace(/_/g, " ");
        TunaChart.draw(c.svg, [
          { name: "train " + label, cls: "train", points: s.train },
          { name: "validation " + label, cls: "valid", points: s.valid, sparse: true },
        ], total, Object.assign({ percent: /accuracy$/.test(c.name) }, SMALL_CHART));
      });
    }

    function renderHeader(job) {
      clear(header);
      const actions = h("div", { class: "actions" });
      if (!TERMINAL.includes(job.status)) {
        actions.appendChild(h("button", {
          type: "button", class: "danger", id: "cancel-job", text: "Cancel job",
          onclick: async function (e) {
            if (!confirm("Cancel " + job.id + "?")) return;
            e.target.disabled = true;
            try {
              renderJob(await api.post("/v1/fine_tuning/jobs/" + job.id + "/cancel"));
              toast("Job cancelled");
            } catch (err) {
              toast(err.message, "error");
              e.target.disabled = false;
            }
          },
        }));
      }
      if (job.fine_tuned_model) {
        actions.appendChild(h("a", {
          class: "button", id: "continue-training", title: "A new job that starts from this model",
          href: "#/new?model=" + encodeURIComponent(job.fine_tuned_model), text: "Train further",
        }));
        actions.appendChild(downloadControl(job));
        actions.appendChild(h("a", {
          class: "button primary", id: "open-playground",
          href: "#/playground?model=" + encodeURIComponent(job.fine_tuned_model), text: "Chat with it",
        }));
      }
      header.appendChild(h("div", {},
        h("a", { href: "#/jobs", class: "small muted", text: "\u2190 All jobs" }),
        h("h1", {}, h("span", { class: "job-title", text: job.id }), " ", badge(job.status), " ", methodTag(job))));
      header.appendChild(actions);
    }

    /** A format picker and a Download button for the job's model (docs/export.md). */
    function downloadControl(job) {
      const lora = (methodHyperparameters(job).training_type || "lora") !== "full";
      const formats = [
        ["merged", "Merged (transformers)"],
        ["gguf:f16", "GGUF f16"],
        ["gguf:q8_0", "GGUF q8_0"],
        ["gguf:q4_0", "GGUF q4_0"],
      ];
      if (lora) formats.unshift(["adapter", "LoRA adapter (peft)"]);
      const select = h("select", { id: "download-format", title: "What to download" },
        formats.map(function (f) { return h("option", { value: f[0], text: f[1] }); }));
      const button = h("button", {
        class: "button", id: "download-model", type: "button", text: "Download",
        onclick: async function () {
          const parts = select.value.split(":");
          const params = { format: parts[0], quantization: parts[1] };
          button.disabled = true;
          try {
            const name = await api.downloadModel(job.fine_tuned_model, params, function (status) {
              button.textContent = "Building (" + status + ")\u2026";
            });
            toast("Downloaded " + name);
          } catch (err) {
            toast(err.message, "error");
          } finally {
            button.disabled = false;
            button.textContent = "Download";
          }
        },
      });
      return h("span", { class: "download-model" }, select, button);
    }

    function renderSummary(job) {
      clear(summary);
      clear(errorArea);
      if (job.error && job.error.message) {
        errorArea.appendChild(errorBox((job.error.code ? job.error.code + ": " : "") + job.error.message));
      }
      if (job.fine_tuned_model) {
        summary.appendChild(h("div", { class: "ft-model" },
          h("span", { class: "muted", text: "Fine-tuned model" }),
          h("code", { id: "ft-model", text: job.fine_tuned_model }),
          copyButton(job.fine_tuned_model)));
      }
      const m = state.latest;
      const total = m && m.total_steps, step = m ? m.step : 0;
      const pct = total ? Math.min(100, (100 * step) / total) : job.status === "succeeded" ? 100 : 0;
      let eta = "\u2013";
      if (job.status === "running" && job.estimated_finish) eta = duration(job.estimated_finish - Date.now() / 1000);
      summary.appendChild(h("div", { class: "progress-block" },
        h("div", { class: "track big" }, h("div", { class: "fill status-" + job.status, style: "width:" + pct.toFixed(1) + "%" })),
        h("div", { class: "stats" },
          stat("Step", total ? step + " / " + total : "\u2013", "progress-steps"),
          stat("Train loss", m && m.train_loss !== undefined ? m.train_loss.toFixed(4) : "\u2013"),
          stat("Valid loss", lastValid()),
          extraMetrics(state.method).map(function (name) {
            const value = m ? m[metricKey(state.method, "train", name)] : undefined;
            return stat(metricLabel(name), formatMetric(name, value), "stat-" + name.replace(/_/g, "-"));
          }),
          stat("Tokens/s", m && m.tokens_per_second ? Math.round(m.tokens_per_second).toLocaleString() : "\u2013"),
          stat("ETA", eta),
          stat("Trained tokens", job.trained_tokens ? job.trained_tokens.toLocaleString() : "\u2013"))));
    }

    function lastValid() {
      const valid = series("loss").valid;
      const v = valid[valid.length - 1];
      return v ? v[1].toFixed(4) : "\u2013";
    }

    function stat(label, value, id) {
      return h("div", { class: "stat" }, h("span", { class: "label", text: label }), h("span", { class: "value", id: id, text: value }));
    }

    function renderDetails(job) {
      clear(details);
      const method = jobMethod(job);
      const mhp = methodHyperparameters(job);
      const rows = [
        [job.model.startsWith("ft:") ? "Trained from" : "Base model", job.model],
        ["Method", METHOD_LABELS[method] || method],
        ["Training file", job.training_file],
        ["Validation file", job.validation_file || "\u2013"],
        mhp.beta !== undefined ? ["Beta", String(mhp.beta)] : null,
        ["Suffix", job.user_provided_suffix || "\u2013"],
        ["Seed", String(job.seed)],
        ["Created", when(job.created_at)],
        ["Finished", when(job.finished_at)],
        ["Result files", (job.result_files || []).join(", ") || "\u2013"],
        comparisonSetting(job),
      ];
      rows.filter(Boolean).forEach(function (r) {
        details.appendChild(h("dt", { text: r[0] }));
        details.appendChild(h("dd", { class: "mono-ish", "data-field": r[0].toLowerCase().replace(/ /g, "-"), text: r[1] }));
      });
      clear(hyper);
      const hp = Object.assign({}, job.hyperparameters, mhp);
      Object.keys(hp).forEach(function (k) {
        hyper.appendChild(h("dt", { text: k }));
        hyper.appendChild(h("dd", { text: String(hp[k]) }));
      });
    }

    function renderJob(job) {
      state.job = job;
      setMethod(job);
      renderHeader(job);
      renderSummary(job);
      renderDetails(job);
      renderComparison(job);
    }

    /** The Details row on the comparison: off, on (for how many examples), or its eval. */
    function comparisonSetting(job) {
      const setting = job.auto_eval;
      if (job.eval) return ["Comparison", job.eval.id + " (" + job.eval.status.replace("_", " ") + ")"];
      if (!setting) return null; // a job from before the comparison existed
      if (!setting.enabled) return ["Comparison", "Off"];
      if (job.status === "succeeded") return ["Comparison", "None (see the events)"];
      if (TERMINAL.includes(job.status)) return ["Comparison", "Off: the job did not succeed"];
      return ["Comparison", "On: once the job succeeds, on up to " + setting.max_items + " validation examples"];
    }

    function renderComparison(job) {
      const table = job.eval;
      comparison.hidden = !table;
      if (!table) return;
      const evalHref = "#/evals/" + encodeURIComponent(table.id);
      clear(comparisonEval).appendChild(h("span", {}, "eval ",
        h("a", { href: evalHref, id: "comparison-eval-link" }, h("code", { text: table.id }))));
      const comparing = RUN_ACTIVE.includes(table.status);
      const best = (table.rows || []).find(function (r) { return r.best; });
      comparisonNote.dataset.status = table.status;
      comparisonNote.textContent = comparing
        ? "Comparing models\u2026 Each model answers up to " + table.items + " validation examples; its scores appear when its run completes (updates every 2 s)."
        : table.items + " validation examples, each model's answer graded for an exact match and for similarity (0 to 1) with the expected one. " +
          (best ? "Best fine-tuned model: " + best.label + " (most exact answers, then similarity, then validation loss)." : "No fine-tuned model could be graded.");
      clear(comparisonBody);
      (table.rows || []).forEach(function (r) {
        const runHref = evalHref + "?run=" + encodeURIComponent(r.run_id);
        const answers = evalHref + "/runs/" + encodeURIComponent(r.run_id);
        comparisonBody.appendChild(h("tr", { "data-run-id": r.run_id, "data-role": r.role, "data-best": r.best ? "true" : null, class: r.best ? "best" : null },
          h("td", { "data-field": "label" },
            h("a", { href: runHref, "data-run-link": r.run_id, text: r.label }),
            r.best ? [" ", h("span", { class: "badge best", title: "The best fine-tuned model on the validation set", text: "best" })] : null),
          h("td", { "data-field": "model" }, h("code", { text: r.model })),
          h("td", { "data-field": "status" }, badge(r.status)),
          h("td", { "data-field": "exact-match", text: r.exact_match == null ? "\u2013" : (100 * r.exact_match).toFixed(1) + "%" }),
          h("td", { "data-field": "similarity", text: r.similarity == null ? "\u2013" : r.similarity.toFixed(2) }),
          h("td", { "data-field": "valid-loss", text: r.valid_loss == null ? "\u2013" : r.valid_loss.toFixed(4) }),
          h("td", {}, h("a", { class: "small", href: answers, "data-answers": r.run_id, text: "Answers" }))));
      });
    }

    function renderEvents() {
      clear(eventList);
      const show = showMetrics.checked;
      for (let i = state.events.length - 1; i >= 0; i--) {
        const e = state.events[i];
        if (e.type === "metrics" && !show) continue;
        eventList.appendChild(h("li", { class: "event level-" + e.level + " type-" + e.type },
          h("time", { text: when(e.created_at).slice(11) }),
          h("span", { class: "event-message", text: e.message })));
      }
    }

    async function renderCheckpoints() {
      const page = await api.get("/v1/fine_tuning/jobs/" + jobId + "/checkpoints", { limit: 100 });
      // DPO: the reward metrics at each checkpoint's step, from its own metrics or the step's event.
      const extras = extraMetrics(state.method);
      clear(checkpointsHead);
      ["Step", "Model", "Train loss", "Valid loss"].concat(extras.map(metricLabel), ["Created"]).forEach(function (c) {
        checkpointsHead.appendChild(h("th", { text: c }));
      });
      clear(checkpoints);
      if (page.data.length === 0) {
        checkpoints.appendChild(h("tr", {}, h("td", { colspan: 5 + extras.length, class: "empty", text: "None yet: one is saved per epoch." })));
      }
      page.data.forEach(function (c) {
        const m = c.metrics || {};
        const atStep = state.byStep.get(c.step_number) || {};
        const model = c.fine_tuned_model_checkpoint;
        checkpoints.appendChild(h("tr", { "data-step": c.step_number },
          h("td", { text: String(c.step_number) }),
          h("td", {}, h("code", { text: model }), " ", copyButton(model), " ",
            h("a", { class: "small", href: "#/new?model=" + encodeURIComponent(model), text: "Train further" })),
          h("td", { text: m.train_loss != null ? m.train_loss.toFixed(4) : "\u2013" }),
          h("td", { text: m.full_valid_loss != null ? m.full_valid_loss.toFixed(4) : m.valid_loss != null ? m.valid_loss.toFixed(4) : "\u2013" }),
          extras.map(function (name) {
            const key = metricKey(state.method, "train", name);
            return h("td", { "data-metric": name, text: formatMetric(name, m[key] != null ? m[key] : atStep[key]) });
          }),
          h("td", { class: "nowrap", text: when(c.created_at) })));
      });
    }

    let checkpointsSeen = -1;
    let done = false;
    every(2000, async function () {
      if (done) return;
      let job;
      try {
        job = await api.get("/v1/fine_tuning/jobs/" + encodeURIComponent(jobId));
      } catch (err) {
        clear(errorArea).appendChild(errorBox(err.message));
        if (err.status === 404) done = true;
        return;
      }
      setMethod(job);
      const fresh = await api.newEvents(jobId, state.seen); // after the job: final events included
      fresh.forEach(function (e) {
        state.seen.add(e.id);
        state.events.push(e);
        if (e.type === "metrics" && e.data) addMetrics(e.data);
      });
      renderJob(job);
      if (fresh.length) {
        renderEvents();
        drawCharts();
      }
      // Checkpoints change once per epoch: re-read them when a message event (e.g.
      // "Checkpoint created") arrives, and once more at the end.
      const messages = state.events.filter(function (e) { return e.type !== "metrics"; }).length;
      if (messages !== checkpointsSeen) {
        checkpointsSeen = messages;
        await renderCheckpoints();
      }
      // A succeeded job's comparison runs after it: keep polling until its runs have ended.
      const comparing = job.eval && RUN_ACTIVE.includes(job.eval.status);
      if (TERMINAL.includes(job.status) && !comparing) done = true;
    });
  }

  // ---- files ------------------------------------------------------------------------------

  function filesPage() {
    const fileInput = h("input", { type: "file", id: "upload-file", accept: ".jsonl,.json,.txt", required: true });
    const purpose = h("select", { id: "upload-purpose" },
      ["fine-tune", "batch", "user_data", "evals"].map(function (p) { return h("option", { value: p, text: p }); }));
    const bar = h("div", { class: "fill" });
    const progress = h("div", { class: "track", hidden: true }, bar);
    const result = h("div", { id: "upload-result" });
    const button = h("button", { type: "submit", class: "primary", id: "upload-button", text: "Upload" });
    const body = h("tbody", {});
    let showCounts = false;

    const form = h("form", {
      class: "upload", id: "upload-form",
      onsubmit: async function (e) {
        e.preventDefault();
        const file = fileInput.files[0];
        if (!file) return;
        clear(result);
        button.disabled = true;
        progress.hidden = false;
        bar.style.width = "0%";
        try {
          const uploaded = await api.upload(file, purpose.value, function (loaded, total) {
            bar.style.width = ((100 * loaded) / total).toFixed(1) + "%";
          });
          const count = uploaded.example_count != null ? ", " + uploaded.example_count + " examples" : "";
          result.appendChild(h("div", { class: "alert ok", role: "status" },
            "Uploaded ", h("code", { text: uploaded.id }), " (" + uploaded.filename + ", " + bytes(uploaded.bytes) + ", " + uploaded.status + count + "). ",
            uploaded.purpose === "fine-tune" ? h("a", { href: "#/new?file=" + encodeURIComponent(uploaded.id), text: "Start a job with it \u2192" }) : null));
          form.reset();
          await refresh();
        } catch (err) {
          result.appendChild(validationReport(err.message));
        } finally {
          button.disabled = false;
          progress.hidden = true;
        }
      },
    },
      h("div", { class: "row" },
        h("label", {}, "Dataset (JSONL)", fileInput),
        h("label", {}, "Purpose", purpose),
        button),
      progress,
      h("p", { class: "muted small", text: "fine-tune files are checked line by line as they upload: one JSON object per line with \"messages\" (system / user / assistant), at least 10 examples for a job." }));

    const head = h("tr", {});
    view.appendChild(h("section", { class: "card" }, h("h1", { text: "Files" }), form, result));
    view.appendChild(h("section", { class: "card" },
      h("table", { class: "table", id: "files-table" }, h("thead", {}, head), body)));

    async function refresh() {
      const page = await api.get("/v1/files", { limit: 200 });
      showCounts = page.data.some(function (f) { return f.example_count !== undefined; });
      clear(head);
      ["ID", "Filename", "Purpose", "Size", "Status"].concat(showCounts ? ["Examples"] : [], ["Created", ""]).forEach(function (c) {
        head.appendChild(h("th", { text: c }));
      });
      clear(body);
      if (page.data.length === 0) {
        body.appendChild(h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No files yet." })));
      }
      page.data.forEach(function (f) {
        body.appendChild(h("tr", { "data-file-id": f.id },
          h("td", { class: "mono", text: f.id }),
          h("td", { text: f.filename }),
          h("td", { text: f.purpose }),
          h("td", { class: "nowrap", text: bytes(f.bytes) }),
          h("td", {}, badge(f.status), f.status_details ? h("div", { class: "small muted", text: f.status_details }) : null),
          showCounts ? h("td", { text: f.example_count != null ? String(f.example_count) : "\u2013" }) : null,
          h("td", { class: "nowrap", text: when(f.created_at) }),
          h("td", {}, h("button", {
            type: "button", class: "link danger-text", text: "Delete",
            onclick: async function () {
              if (!confirm("Delete " + f.id + "?")) return;
              try { await api.del("/v1/files/" + f.id); await refresh(); } catch (err) { toast(err.message, "error"); }
            },
          }))));
      });
    }
    refresh().catch(function (err) { result.appendChild(errorBox(err.message)); });
  }

  // ---- new job ----------------------------------------------------------------------------

  function newJobPage(params) {
    const model = h("select", { id: "job-model", name: "model", required: true });
    const training = h("select", { id: "job-training-file", name: "training_file", required: true });
    const validation = h("select", { id: "job-validation-file", name: "validation_file" });
    const suffix = h("input", { id: "job-suffix", name: "suffix", maxlength: 64, placeholder: "optional" });
    const epochs = h("input", { id: "job-epochs", type: "number", min: 1, max: 50, placeholder: "auto" });
    const batch = h("input", { id: "job-batch-size", type: "number", min: 1, max: 256, placeholder: "auto" });
    const lr = h("input", { id: "job-lr", type: "number", min: 0, step: "any", placeholder: "auto" });
    const seed = h("input", { id: "job-seed", type: "number", min: 0, placeholder: "random" });
    const trainingType = h("select", { id: "job-training-type" },
      h("option", { value: "lora", text: "LoRA (adapter)" }), h("option", { value: "full", text: "Full fine-tuning" }));
    const methodType = h("select", { id: "job-method", name: "method" },
      h("option", { value: "supervised", text: "Supervised (chat or completion examples)" }),
      h("option", { value: "dpo", text: "DPO (preference pairs)" }));
    const beta = h("input", { id: "job-beta", type: "number", min: 0, max: 2, step: "any", placeholder: "auto" });
    const betaField = h("label", { id: "job-beta-field", hidden: true }, "Beta (DPO, in (0, 2])", beta);
    const methodHint = h("p", { class: "muted small", id: "job-method-hint" });
    const showMethod = function () {
      const dpo = methodType.value === "dpo";
      betaField.hidden = !dpo;
      methodHint.textContent = dpo
        ? "DPO trains on preference files: one JSON object per line with \"input\" (the messages), \"preferred_output\" and \"non_preferred_output\". Beta sets how far the model may move from where it starts (empty means auto)."
        : "Supervised training learns the assistant's answers of chat (\"messages\") or completion (\"prompt\", \"completion\") examples.";
    };
    methodType.addEventListener("change", showMethod);
    showMethod();
    // Tuna's `auto_eval`: a job with a validation file compares its models on it when it succeeds.
    const autoEval = h("input", { type: "checkbox", id: "job-auto-eval", checked: true });
    const evalItems = h("input", { id: "job-eval-items", type: "number", min: 1, step: 1, placeholder: "server default" });
    const autoEvalHint = h("p", { class: "muted small", id: "job-auto-eval-hint" });
    const showAutoEval = function () {
      const usable = validation.value !== "";
      autoEval.disabled = !usable;
      evalItems.disabled = !usable || !autoEval.checked;
      autoEvalHint.textContent = usable
        ? "When the job succeeds, the starting model, each checkpoint and the final model answer the validation examples; the job page shows their exact match, similarity and validation loss side by side, the best marked."
        : "Needs a validation file: the models are compared on it.";
    };
    validation.addEventListener("change", showAutoEval);
    autoEval.addEventListener("change", showAutoEval);
    showAutoEval();
    const message = h("div", {});
    const submit = h("button", { type: "submit", class: "primary", id: "create-job", text: "Start job" });

    const form = h("form", {
      class: "card form", id: "new-job-form",
      onsubmit: async function (e) {
        e.preventDefault();
        clear(message);
        const body = { model: model.value, training_file: training.value };
        if (validation.value) body.validation_file = validation.value;
        if (suffix.value.trim()) body.suffix = suffix.value.trim();
        if (seed.value !== "") body.seed = Number(seed.value);
        const hp = {};
        const type = methodType.value;
        if (epochs.value !== "") hp.n_epochs = Number(epochs.value);
        if (batch.value !== "") hp.batch_size = Number(batch.value);
        if (lr.value !== "") hp.learning_rate_multiplier = Number(lr.value);
        if (type === "dpo" && beta.value !== "") hp.beta = Number(beta.value);
        if (trainingType.value === "full") hp.training_type = "full";
        // OpenAI's wire format: method.<type>.hyperparameters; no method at all is supervised.
        if (Object.keys(hp).length) {
          body.method = { type: type };
          body.method[type] = { hyperparameters: hp };
        } else if (type !== "supervised") {
          body.method = { type: type };
        }
        // Left out, a job with a validation file compares its models (the server's default).
        if (validation.value && !autoEval.checked) body.auto_eval = false;
        else if (validation.value && evalItems.value !== "") body.auto_eval = { max_items: Number(evalItems.value) };
        submit.disabled = true;
        try {
          const job = await api.post("/v1/fine_tuning/jobs", body);
          location.hash = "#/jobs/" + job.id;
        } catch (err) {
          message.appendChild(errorBox(err.message));
          submit.disabled = false;
        }
      },
    },
      h("h1", { text: "New fine-tuning job" }),
      h("div", { class: "form-grid" },
        h("label", {}, "Model (a base model, or one of your fine-tuned models to train further)", model),
        h("label", {}, "Training file", training),
        h("label", {}, "Validation file", validation),
        h("label", {}, "Suffix (in the ft: model id)", suffix),
        h("label", {}, "Method", methodType)),
      methodHint,
      h("h2", { text: "Hyperparameters" }),
      h("div", { class: "form-grid four" },
        h("label", {}, "Epochs", epochs),
        h("label", {}, "Batch size", batch),
        h("label", {}, "Learning rate multiplier", lr),
        h("label", {}, "Seed", seed),
        h("label", {}, "Training type", trainingType),
        betaField),
      h("h2", { text: "Comparison" }),
      h("div", { class: "form-grid four" },
        h("label", { class: "check span2" }, autoEval, " Compare models on the validation set"),
        h("label", {}, "Max items", evalItems)),
      autoEvalHint,
      message,
      h("div", { class: "actions" }, submit));
    view.appendChild(form);

    Promise.all([api.get("/v1/models"), api.get("/v1/files", { purpose: "fine-tune", limit: 200 })]).then(function (res) {
      const models = res[0].data, files = res[1].data;
      // The project's ft: models (and checkpoints) start a continued training from their weights.
      const isFineTuned = function (m) { return m.id.startsWith("ft:"); };
      const groups = [
        ["Base models", models.filter(function (m) { return !isFineTuned(m); })],
        ["Your fine-tuned models (train further)", models.filter(isFineTuned)],
      ];
      const wanted = params.get("model");
      if (wanted && !models.some(function (m) { return m.id === wanted; })) {
        groups[isFineTuned({ id: wanted }) ? 1 : 0][1].unshift({ id: wanted });
      }
      groups.forEach(function (g) {
        if (g[1].length === 0) return;
        model.appendChild(h("optgroup", { label: g[0] }, g[1].map(function (m) {
          return h("option", { value: m.id, text: m.id });
        })));
      });
      if (files.length === 0) {
        message.appendChild(h("div", { class: "alert" }, "No training files yet. ", h("a", { href: "#/files", text: "Upload one first." })));
      }
      validation.appendChild(h("option", { value: "", text: "(none)" }));
      files.forEach(function (f) {
        const label = f.id + " \u2014 " + f.filename;
        training.appendChild(h("option", { value: f.id, text: label }));
        validation.appendChild(h("option", { value: f.id, text: label }));
      });
      if (params.get("file")) training.value = params.get("file");
      if (params.get("model")) model.value = params.get("model");
      showAutoEval();
    }).catch(function (err) { message.appendChild(errorBox(err.message)); });
  }

  // ---- evals ------------------------------------------------------------------------------

  const RUN_ACTIVE = ["queued", "in_progress"];
  // The "New eval" form's grading: from tuna_core.evals (served as /dashboard/evals.js), the
  // criteria `tuna evals create --expect FIELD` sends.
  const EVALS = window.TUNA_EVALS || { expect_criteria: [], field_placeholder: "__FIELD__" };

  function expectCriteria(field) {
    return JSON.parse(JSON.stringify(EVALS.expect_criteria), function (k, v) {
      return typeof v === "string" ? v.split(EVALS.field_placeholder).join(field) : v;
    });
  }

  function evalPath(evalId) {
    return "/v1/evals/" + encodeURIComponent(evalId);
  }

  function criteriaNames(evaluation) {
    return (evaluation.testing_criteria || []).map(function (c) { return c.name || c.type; });
  }

  function passRate(run) {
    const c = run.result_counts || {};
    return c.total ? ((100 * (c.passed || 0)) / c.total).toFixed(1) + "%" : "\u2013";
  }

  /** Every page of a list endpoint (`limit` 100, `after` the last id). */
  async function allPages(path, params) {
    const data = [];
    let after = null;
    for (;;) {
      const page = await api.get(path, Object.assign({ limit: 100, after: after }, params || {}));
      data.push.apply(data, page.data);
      if (!page.has_more || page.data.length === 0) return data;
      after = page.data[page.data.length - 1].id;
    }
  }

  function answerOf(item) {
    const out = (item && item.sample && item.sample.output) || [];
    return out.length && typeof out[0].content === "string" ? out[0].content : "";
  }

  function itemText(item) {
    return JSON.stringify(item && item.datasource_item !== undefined ? item.datasource_item : item);
  }

  function gradeBadge(status) {
    return h("span", { class: "badge grade-" + status, "data-grade": status, text: status });
  }

  function evalsPage() {
    const body = h("tbody", {});
    const listError = h("div", {});
    view.appendChild(h("section", { class: "card" },
      h("div", { class: "card-head" }, h("h1", { text: "Evals" })),
      listError,
      h("table", { class: "table", id: "evals-table" },
        h("thead", {}, h("tr", {}, ["Name", "ID", "Criteria", "Created"].map(function (c) {
          return h("th", { text: c });
        }))),
        body)));
    view.appendChild(newEvalForm());

    api.get("/v1/evals", { limit: 100, order: "desc" }).then(function (page) {
      if (page.data.length === 0) {
        body.appendChild(h("tr", {}, h("td", { colspan: 4, class: "empty", text: "No evals yet: create one below." })));
      }
      page.data.forEach(function (e) {
        body.appendChild(h("tr", { "data-eval-id": e.id },
          h("td", {}, h("a", { href: "#/evals/" + encodeURIComponent(e.id), text: e.name || e.id })),
          h("td", { class: "mono small", text: e.id }),
          h("td", { text: criteriaNames(e).join(", ") }),
          h("td", { class: "nowrap", text: when(e.created_at) })));
      });
    }).catch(function (err) { listError.appendChild(errorBox(err.message)); });
  }

  function newEvalForm() {
    const name = h("input", { id: "eval-name", required: true, maxlength: 200, placeholder: "capitals" });
    const file = h("select", { id: "eval-file", required: true });
    const upload = h("input", { type: "file", id: "eval-upload", accept: ".jsonl,.json,.txt" });
    const uploadNote = h("div", { id: "eval-upload-result" });
    const system = h("textarea", { id: "eval-system", rows: 2, placeholder: "System message (optional), e.g. Answer with one word." });
    const prompt = h("textarea", { id: "eval-prompt", rows: 2, required: true });
    prompt.value = "{{ item.question }}";
    const expect = h("input", { id: "eval-expect", required: true, value: "answer", pattern: "[A-Za-z_][A-Za-z0-9_.]*" });
    const maxTokens = h("input", { id: "eval-max-tokens", type: "number", min: 1, max: 32768, value: 256 });
    const temperature = h("input", { id: "eval-temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
    const models = h("div", { class: "checks", id: "eval-models" });
    const message = h("div", {});
    const submit = h("button", { type: "submit", class: "primary", id: "create-eval", text: "Create eval and runs" });

    function addFile(f) {
      file.appendChild(h("option", { value: f.id, text: f.id + " \u2014 " + f.filename }));
    }

    upload.addEventListener("change", async function () {
      const chosen = upload.files[0];
      if (!chosen) return;
      clear(uploadNote);
      try {
        const uploaded = await api.upload(chosen, "evals");
        addFile(uploaded);
        file.value = uploaded.id;
        uploadNote.appendChild(h("div", { class: "alert ok", role: "status" }, "Uploaded ", h("code", { text: uploaded.id }), " (" + uploaded.filename + ")."));
      } catch (err) {
        uploadNote.appendChild(validationReport(err.message));
      }
      upload.value = "";
    });

    const form = h("form", {
      class: "card form", id: "new-eval-form",
      onsubmit: async function (e) {
        e.preventDefault();
        clear(message);
        const picked = Array.from(models.querySelectorAll("input[type=checkbox]:checked")).map(function (c) { return c.value; });
        if (!file.value) return message.appendChild(errorBox("Pick or upload an evals file."));
        if (picked.length === 0) return message.appendChild(errorBox("Pick at least one model to run the eval on."));
        const template = system.value.trim() ? [{ role: "system", content: system.value.trim() }] : [];
        template.push({ role: "user", content: prompt.value.trim() });
        const sampling = { temperature: Number(temperature.value || 0), max_completions_tokens: Number(maxTokens.value || 256) };
        submit.disabled = true;
        let evaluation;
        try {
          evaluation = await api.post("/v1/evals", {
            name: name.value.trim(),
            data_source_config: { type: "custom", item_schema: { type: "object" } },
            testing_criteria: expectCriteria(expect.value.trim()),
          });
          for (const model of picked) {
            await api.post(evalPath(evaluation.id) + "/runs", {
              name: model,
              data_source: {
                type: "completions",
                source: { type: "file_id", id: file.value },
                input_messages: { type: "template", template: template },
                model: model,
                sampling_params: sampling,
              },
            });
          }
          location.hash = "#/evals/" + encodeURIComponent(evaluation.id);
        } catch (err) {
          message.appendChild(validationReport(err.message));
          if (evaluation) {
            message.appendChild(h("p", { class: "small" }, "The eval was created; ",
              h("a", { href: "#/evals/" + encodeURIComponent(evaluation.id), text: "open it" }), " to see the runs that started."));
          }
          submit.disabled = false;
        }
      },
    },
      h("h2", { text: "New eval" }),
      h("div", { class: "form-grid" },
        h("label", {}, "Name", name),
        h("label", {}, "Items (an evals JSONL file: one JSON object per line)", file),
        h("label", {}, "\u2026 or upload one", upload),
        h("label", {}, "Expected answer field (item.FIELD)", expect)),
      uploadNote,
      h("label", {}, "System message (a template)", system),
      h("label", {}, "User message (a template: {{ item.field }})", prompt),
      h("p", { class: "muted small", id: "eval-grading-hint", text: "Graded as `tuna evals create --expect FIELD` grades: \"exact\" (the answer equals item.FIELD) and \"similar\" (fuzzy match of at least 0.8)." }),
      h("div", { class: "form-grid four" },
        h("label", {}, "Max tokens", maxTokens),
        h("label", {}, "Temperature", temperature)),
      h("h2", { text: "Models to compare" }),
      models,
      message,
      h("div", { class: "actions" }, submit));

    Promise.all([api.get("/v1/models"), api.get("/v1/files", { purpose: "evals", limit: 200 })]).then(function (res) {
      const all = res[0].data;
      const isFineTuned = function (m) { return m.id.startsWith("ft:"); };
      [["Base models", all.filter(function (m) { return !isFineTuned(m); })],
        ["Your fine-tuned models and checkpoints", all.filter(isFineTuned)]].forEach(function (g) {
        if (g[1].length === 0) return;
        models.appendChild(h("fieldset", { class: "check-group" }, h("legend", { text: g[0] }),
          g[1].map(function (m) {
            return h("label", { class: "check" }, h("input", { type: "checkbox", name: "model", value: m.id }), " ", h("code", { text: m.id }));
          })));
      });
      file.appendChild(h("option", { value: "", text: res[1].data.length ? "(pick a file)" : "(no evals files yet: upload one)" }));
      res[1].data.forEach(addFile);
    }).catch(function (err) { message.appendChild(errorBox(err.message)); });
    return form;
  }

  function evalPage(evalId, params) {
    const header = h("div", { class: "card-head" });
    const errorArea = h("div", {});
    const runsHead = h("tr", {});
    const runsBody = h("tbody", {});
    const status = h("p", { class: "muted small", id: "runs-refresh" });
    const disagreeHead = h("tr", {});
    const disagreeBody = h("tbody", {});
    const disagreeNote = h("p", { class: "muted small", id: "disagreements-note", text: "Shown once the runs have finished." });
    const picked = params.get("run");
    view.appendChild(h("section", { class: "card" }, header, errorArea,
      h("table", { class: "table", id: "runs-table" }, h("thead", {}, runsHead), runsBody), status));
    view.appendChild(h("section", { class: "card" },
      h("h2", { text: "Where the models disagree" }),
      h("p", { class: "muted small", text: "Items that pass on some runs and fail on others." }),
      disagreeNote,
      h("table", { class: "table", id: "disagreements" }, h("thead", {}, disagreeHead), disagreeBody)));

    let evaluation = null;
    let comparedFor = null; // the finished runs the disagreements were computed for

    function renderRuns(runs) {
      const names = criteriaNames(evaluation);
      clear(runsHead);
      ["Model", "Status", "Items", "Pass rate"].concat(names, [""]).forEach(function (c) {
        runsHead.appendChild(h("th", { text: c }));
      });
      clear(runsBody);
      if (runs.length === 0) {
        runsBody.appendChild(h("tr", {}, h("td", { colspan: 5 + names.length, class: "empty", text: "No runs yet." })));
      }
      runs.forEach(function (run) {
        const results = run.per_testing_criteria_results || [];
        const counts = run.result_counts || {};
        const failures = "#/evals/" + encodeURIComponent(evalId) + "/runs/" + encodeURIComponent(run.id) + "?status=fail";
        runsBody.appendChild(h("tr", { "data-run-id": run.id, class: run.id === picked ? "picked" : null },
          h("td", {}, h("code", { text: run.model }), run.name && run.name !== run.model ? h("div", { class: "small muted", text: run.name }) : null),
          h("td", {}, badge(run.status), run.error && run.error.message ? h("div", { class: "small danger-text", text: run.error.message }) : null),
          h("td", { "data-field": "items", text: String(counts.total || 0) }),
          h("td", { "data-field": "pass-rate", text: passRate(run) }),
          names.map(function (n, i) {
            const r = results.find(function (x) { return x.testing_criteria === n; }) || results[i];
            const graded = r ? (r.passed || 0) + (r.failed || 0) : 0;
            return h("td", { "data-criterion": n, text: r && graded ? r.passed + "/" + graded : "\u2013" });
          }),
          h("td", {}, h("a", { class: "small", href: failures, "data-failures": run.id, text: "Failures" + (counts.failed ? " (" + counts.failed + ")" : "") }))));
      });
    }

    async function renderDisagreements(runs) {
      const done = runs.filter(function (r) { return r.status === "completed"; });
      const items = await Promise.all(done.map(function (r) {
        return allPages(evalPath(evalId) + "/runs/" + encodeURIComponent(r.id) + "/output_items", { order: "asc" });
      }));
      const byItem = new Map(); // datasource_item_id -> {item, runs: {runId: output item}}
      items.forEach(function (list, i) {
        list.forEach(function (it) {
          if (!byItem.has(it.datasource_item_id)) byItem.set(it.datasource_item_id, { item: it, runs: {} });
          byItem.get(it.datasource_item_id).runs[done[i].id] = it;
        });
      });
      const disagreements = Array.from(byItem.entries()).filter(function (entry) {
        const statuses = Object.values(entry[1].runs).map(function (it) { return it.status; });
        return statuses.includes("pass") && statuses.includes("fail");
      }).sort(function (a, b) { return a[0] - b[0]; });
      clear(disagreeHead);
      disagreeHead.appendChild(h("th", { text: "Item" }));
      done.forEach(function (r) {
        // Two runs of one model (e.g. other prompts) are told apart by their name or id.
        const twin = done.some(function (o) { return o !== r && o.model === r.model; });
        const label = r.name && r.name !== r.model ? r.name : r.id;
        disagreeHead.appendChild(h("th", { "data-run-id": r.id }, h("code", { text: r.model }),
          twin ? h("div", { class: "small muted mono", text: label }) : null));
      });
      clear(disagreeBody);
      disagreeNote.textContent = done.length < 2
        ? "Needs two finished runs to compare."
        : disagreements.length + " of " + byItem.size + " items get different grades.";
      disagreements.forEach(function (entry) {
        disagreeBody.appendChild(h("tr", { "data-item-id": entry[0] },
          h("td", { class: "mono small item-cell", text: "#" + entry[0] + " " + itemText(entry[1].item) }),
          done.map(function (r) {
            const it = entry[1].runs[r.id];
            if (!it) return h("td", { class: "muted", text: "\u2013" });
            return h("td", { "data-run-id": r.id, "data-grade": it.status },
              gradeBadge(it.status), " ", h("span", { class: "answer", text: answerOf(it) }));
          })));
      });
    }

    let stopped = false;
    every(2000, async function () {
      if (stopped) return;
      try {
        if (!evaluation) {
          evaluation = await api.get(evalPath(evalId));
          clear(header).appendChild(h("div", {},
            h("a", { href: "#/evals", class: "small muted", text: "\u2190 All evals" }),
            h("h1", {}, h("span", { text: evaluation.name || evaluation.id }), " ", h("code", { class: "small muted", text: evaluation.id })),
            h("p", { class: "muted small", text: "Criteria: " + criteriaNames(evaluation).join(", ") })));
        }
        const runs = await allPages(evalPath(evalId) + "/runs", { order: "asc" });
        clear(errorArea);
        renderRuns(runs);
        const active = runs.some(function (r) { return RUN_ACTIVE.includes(r.status); });
        const key = runs.map(function (r) { return r.id + ":" + r.status; }).join(",");
        if (!active && key !== comparedFor) {
          await renderDisagreements(runs);
          comparedFor = key;
        }
        status.textContent = active
          ? "Refreshed " + new Date().toLocaleTimeString() + " \u00b7 updates every 2 s while runs are queued or in progress"
          : "All runs finished.";
        if (!active) stopped = true;
      } catch (err) {
        clear(errorArea).appendChild(errorBox(err.message));
        if (err.status === 404) stopped = true;
      }
    });
  }

  function evalRunItemsPage(evalId, runId, params) {
    const wanted = params.get("status") || "";
    const filter = h("select", { id: "items-status" },
      [["", "all"], ["fail", "failed"], ["pass", "passed"]].map(function (o) { return h("option", { value: o[0], text: o[1] }); }));
    filter.value = wanted;
    filter.addEventListener("change", function () {
      location.hash = "#/evals/" + encodeURIComponent(evalId) + "/runs/" + encodeURIComponent(runId) + (filter.value ? "?status=" + filter.value : "");
    });
    const title = h("h1", {}, "Run ", h("code", { text: runId }));
    const errorArea = h("div", {});
    const body = h("tbody", {});
    view.appendChild(h("section", { class: "card" },
      h("div", { class: "card-head" },
        h("div", {}, h("a", { href: "#/evals/" + encodeURIComponent(evalId), class: "small muted", text: "\u2190 The eval" }), title),
        h("label", { class: "inline small muted" }, "Items ", filter)),
      errorArea,
      h("table", { class: "table", id: "run-items" },
        h("thead", {}, h("tr", {}, ["#", "Item", "Answer", "Grades", "Status"].map(function (c) { return h("th", { text: c }); }))),
        body)));
    const base = evalPath(evalId) + "/runs/" + encodeURIComponent(runId);
    Promise.all([api.get(base), allPages(base + "/output_items", { order: "asc", status: wanted || undefined })]).then(function (res) {
      const run = res[0];
      clear(title).appendChild(h("span", {}, "Run on ", h("code", { text: run.model }), " ", badge(run.status)));
      if (res[1].length === 0) {
        body.appendChild(h("tr", {}, h("td", { colspan: 5, class: "empty", text: RUN_ACTIVE.includes(run.status) ? "No graded items yet: the run is " + run.status.replace("_", " ") + "." : "No items." })));
      }
      res[1].forEach(function (it) {
        body.appendChild(h("tr", { "data-item-id": it.datasource_item_id },
          h("td", { text: String(it.datasource_item_id) }),
          h("td", { class: "mono small item-cell", text: itemText(it) }),
          h("td", { class: "answer", text: answerOf(it) }),
          h("td", { class: "small" }, (it.results || []).map(function (r) {
            return h("div", {}, r.name + ": " + (r.passed ? "pass" : "fail") + (typeof r.score === "number" ? " (" + r.score.toFixed(2) + ")" : ""));
          })),
          h("td", {}, gradeBadge(it.status))));
      });
    }).catch(function (err) { errorArea.appendChild(errorBox(err.message)); });
  }

  // ---- playground -------------------------------------------------------------------------

  function playgroundPage(params) {
    const model = h("select", { id: "pg-model" });
    const system = h("textarea", { id: "pg-system", rows: 2, placeholder: "System message (optional)" });
    const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: 1, value: 256 });
    const temperature = h("input", { id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
    const transcript = h("div", { class: "transcript", id: "transcript" });
    const input = h("textarea", { id: "pg-input", rows: 2, placeholder: "Say something\u2026 (Enter to send, Shift+Enter for a new line)" });
    const send = h("button", { type: "submit", class: "primary", id: "pg-send", text: "Send" });
    const stop = h("button", { type: "button", id: "pg-stop", text: "Stop", hidden: true });
    const reset = h("button", { type: "button", class: "link", text: "Clear", onclick: function () { history = []; clear(transcript); } });
    let history = [];
    let controller = null;

    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    });
    stop.addEventListener("click", function () { if (controller) controller.abort(); });

    function bubble(role, text) {
      const content = h("div", { class: "content", text: text });
      const node = h("div", { class: "msg " + role }, h("div", { class: "role", text: role }), content);
      transcript.appendChild(node);
      transcript.scrollTop = transcript.scrollHeight;
      return { node: node, content: content };
    }

    const form = h("form", {
      class: "composer", id: "pg-form",
      onsubmit: async function (e) {
        e.preventDefault();
        const text = input.value.trim();
        if (!text || controller) return;
        input.value = "";
        bubble("user", text);
        history.push({ role: "user", content: text });
        const reply = bubble("assistant", "");
        reply.node.classList.add("streaming");
        const messages = (system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []).concat(history);
        const body = { model: model.value, messages: messages };
        if (maxTokens.value) body.max_tokens = Number(maxTokens.value);
        if (temperature.value !== "") body.temperature = Number(temperature.value);
        controller = new AbortController();
        send.disabled = true;
        stop.hidden = false;
        let answer = "";
        try {
          await api.streamChat(body, function (chunk) {
            (chunk.choices || []).forEach(function (c) {
              if (c.delta && c.delta.content) {
                answer += c.delta.content;
                reply.content.textContent = answer;
                transcript.scrollTop = transcript.scrollHeight;
              }
              if (c.finish_reason) reply.node.dataset.finishReason = c.finish_reason;
            });
          }, controller.signal);
          history.push({ role: "assistant", content: answer });
        } catch (err) {
          history.pop();
          reply.node.classList.add("error");
          reply.content.textContent = err.message;
        } finally {
          reply.node.classList.remove("streaming");
          reply.node.dataset.done = "true";
          controller = null;
          send.disabled = false;
          stop.hidden = true;
          input.focus();
        }
      },
    }, input, h("div", { class: "composer-actions" }, reset, stop, send));

    view.appendChild(h("section", { class: "card playground" },
      h("div", { class: "card-head" }, h("h1", { text: "Playground" })),
      h("div", { class: "form-grid four" },
        h("label", { class: "span2" }, "Model", model),
        h("label", {}, "Max tokens", maxTokens),
        h("label", {}, "Temperature", temperature)),
      system, transcript, form));

    api.get("/v1/models").then(function (res) {
      const ids = res.data.map(function (m) { return m.id; });
      const wanted = params.get("model");
      if (wanted && ids.indexOf(wanted) === -1) ids.unshift(wanted);
      ids.forEach(function (id) { model.appendChild(h("option", { value: id, text: id })); });
      if (wanted) model.value = wanted;
    }).catch(function (err) { transcript.appendChild(errorBox(err.message)); });
  }

  // ---- webhooks ---------------------------------------------------------------------------

  // The event types of app/webhooks/events.py (the API does not list them): OpenAI's, then Tuna's.
  const WEBHOOK_EVENTS = [
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.running",
    "fine_tuning.job.checkpoint.created",
    "eval.run.succeeded",
    "eval.run.failed",
    "eval.run.canceled",
  ];

  function webhookPath(id) {
    return "/v1/webhooks/" + encodeURIComponent(id);
  }

  function webhooksPage() {
    const body = h("tbody", {});
    const listError = h("div", {});
    const secretArea = h("div", { id: "webhook-secret-area" });
    view.appendChild(h("section", { class: "card" },
      h("div", { class: "card-head" }, h("h1", { text: "Webhooks" })),
      h("p", { class: "muted small", text: "Tuna POSTs a signed event to each endpoint when a job or an eval run changes state (Standard Webhooks signatures, as OpenAI's)." }),
      secretArea,
      listError,
      h("table", { class: "table", id: "webhooks-table" },
        h("thead", {}, h("tr", {}, ["URL", "ID", "Events", "Description", "Created", ""].map(function (c) {
          return h("th", { text: c });
        }))),
        body)));

    async function refresh() {
      const page = await api.get("/v1/webhooks", { limit: 100 });
      clear(body);
      clear(listError);
      if (page.data.length === 0) {
        body.appendChild(h("tr", {}, h("td", { colspan: 6, class: "empty", text: "No webhook endpoints yet: add one below." })));
      }
      page.data.forEach(function (w) {
        const all = w.events.length === WEBHOOK_EVENTS.length;
        body.appendChild(h("tr", { "data-webhook-id": w.id },
          h("td", {}, h("a", { href: "#/webhooks/" + encodeURIComponent(w.id), class: "mono small", text: w.url })),
          h("td", { class: "mono small", text: w.id }),
          h("td", { class: "small", text: (all ? "all events" : w.events.join(", ")) + (w.enabled === false ? " (disabled)" : "") }),
          h("td", { text: w.description || "" }),
          h("td", { class: "nowrap", text: when(w.created_at) }),
          h("td", { class: "nowrap" },
            h("a", { href: "#/webhooks/" + encodeURIComponent(w.id), class: "small", text: "Deliveries" }), " ",
            // A disabled endpoint gets no new deliveries; its pending ones wait until enabled.
            h("button", {
              type: "button", class: "link toggle-webhook", text: w.enabled === false ? "Enable" : "Disable",
              onclick: async function () {
                try {
                  await api.post(webhookPath(w.id), { enabled: w.enabled === false });
                  toast((w.enabled === false ? "Enabled " : "Disabled ") + w.id);
                  await refresh();
                } catch (err) { toast(err.message, "error"); }
              },
            }), " ",
            h("button", {
              type: "button", class: "link danger-text delete-webhook", text: "Delete",
              onclick: async function () {
                if (!confirm("Delete the webhook endpoint " + w.url + " (" + w.id + ")? Its pending deliveries are dropped.")) return;
                try {
                  await api.del(webhookPath(w.id));
                  clear(secretArea);
                  toast("Deleted " + w.id);
                  await refresh();
                } catch (err) { toast(err.message, "error"); }
              },
            }))));
      });
    }

    function showSecret(created) {
      clear(secretArea);
      secretArea.appendChild(h("div", { class: "alert ok secret", role: "status", id: "webhook-secret" },
        h("div", {}, "Created ", h("code", { text: created.id }), " for ", h("code", { text: created.url }), "."),
        h("div", { class: "secret-line" }, "Signing secret: ", h("code", { class: "mono", id: "webhook-secret-value", text: created.secret }), " ", copyButton(created.secret)),
        h("div", { class: "small", text: "Copy it now: it is shown only once. It verifies the webhook-signature header of each delivery." })));
    }

    view.appendChild(newWebhookForm(async function (created) {
      showSecret(created);
      await refresh();
    }));
    refresh().catch(function (err) { listError.appendChild(errorBox(err.message)); });
  }

  function newWebhookForm(onCreated) {
    const url = h("input", { id: "webhook-url", type: "url", required: true, placeholder: "https://example.com/tuna-webhook" });
    const description = h("input", { id: "webhook-description", maxlength: 512, placeholder: "optional" });
    const events = h("div", { class: "checks", id: "webhook-events" },
      WEBHOOK_EVENTS.map(function (type) {
        return h("label", { class: "check" }, h("input", { type: "checkbox", name: "event", value: type }), " ", h("code", { text: type }));
      }));
    const message = h("div", {});
    const submit = h("button", { type: "submit", class: "primary", id: "create-webhook", text: "Add endpoint" });
    const form = h("form", {
      class: "card form", id: "new-webhook-form",
      onsubmit: async function (e) {
        e.preventDefault();
        clear(message);
        const picked = Array.from(events.querySelectorAll("input[type=checkbox]:checked")).map(function (c) { return c.value; });
        const payload = { url: url.value.trim() };
        if (picked.length) payload.events = picked;
        if (description.value.trim()) payload.description = description.value.trim();
        submit.disabled = true;
        try {
          const created = await api.post("/v1/webhooks", payload);
          form.reset();
          await onCreated(created);
        } catch (err) {
          message.appendChild(errorBox(err.message));
        } finally {
          submit.disabled = false;
        }
      },
    },
      h("h2", { text: "Add an endpoint" }),
      h("div", { class: "form-grid" },
        h("label", {}, "URL (http or https)", url),
        h("label", {}, "Description", description)),
      h("h2", { text: "Events" }),
      h("p", { class: "muted small", text: "Tick none to get every event type." }),
      events,
      message,
      h("div", { class: "actions" }, submit));
    return form;
  }

  function webhookPage(webhookId) {
    const header = h("div", { class: "card-head" });
    const details = h("div", {});
    const errorArea = h("div", {});
    const body = h("tbody", {});
    const status = h("p", { class: "muted small", id: "deliveries-refresh" });
    view.appendChild(h("section", { class: "card" }, header, errorArea, details));
    view.appendChild(h("section", { class: "card" },
      h("h2", { text: "Deliveries" }),
      h("table", { class: "table", id: "deliveries-table" },
        h("thead", {}, h("tr", {}, ["Event", "Status", "Attempts", "HTTP", "Last error", "Next try", "Delivered", "Created"].map(function (c) {
          return h("th", { text: c });
        }))),
        body),
      status));

    api.get(webhookPath(webhookId)).then(function (w) {
      header.appendChild(h("div", {},
        h("a", { href: "#/webhooks", class: "small muted", text: "\u2190 All webhooks" }),
        h("h1", { class: "mono", text: w.url })));
      header.appendChild(h("button", {
        type: "button", class: "danger", id: "delete-webhook", text: "Delete",
        onclick: async function () {
          if (!confirm("Delete the webhook endpoint " + w.url + " (" + w.id + ")? Its pending deliveries are dropped.")) return;
          try { await api.del(webhookPath(w.id)); location.hash = "#/webhooks"; } catch (err) { toast(err.message, "error"); }
        },
      }));
      details.appendChild(h("dl", { class: "details" },
        h("dt", { text: "ID" }), h("dd", { class: "mono", text: w.id }),
        h("dt", { text: "Events" }), h("dd", { class: "small", text: w.events.join(", ") }),
        w.description ? [h("dt", { text: "Description" }), h("dd", { text: w.description })] : null,
        h("dt", { text: "Created" }), h("dd", { text: when(w.created_at) })));
    }).catch(function (err) { errorArea.appendChild(errorBox(err.message)); });

    every(5000, async function () {
      const page = await api.get(webhookPath(webhookId) + "/deliveries", { limit: 100 });
      clear(body);
      if (page.data.length === 0) {
        body.appendChild(h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No deliveries yet." })));
      }
      page.data.forEach(function (d) {
        body.appendChild(h("tr", { "data-delivery-id": d.id },
          h("td", {}, h("code", { text: d.event_type }), h("div", { class: "small muted mono", text: d.event_id })),
          h("td", {}, badge(d.status)),
          h("td", { text: String(d.attempts) }),
          h("td", { text: d.last_status_code ? String(d.last_status_code) : "\u2013" }),
          h("td", { class: "small", text: d.last_error || "" }),
          h("td", { class: "nowrap", text: when(d.next_attempt_at) }),
          h("td", { class: "nowrap", text: when(d.delivered_at) }),
          h("td", { class: "nowrap", text: when(d.created_at) })));
      });
      status.textContent = "Refreshed " + when(Math.floor(Date.now() / 1000)) + "; every 5 seconds.";
    });
  }

  route();
})();
