// The live page of a taskmap run (taskmap/observe/dashboard.py serves it).
// Reads the run's Server-Sent Events: "graph" (the layout, once), "state"
// (counts, node statuses, running tasks, failures, resources; at most 5 a
// second), "bars" (finished tasks for the task stream), "end".
// No library, no outside request: the page's Content-Security-Policy forbids them.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const LETTERS = "prdfs"; // pending, running, done, failed, skipped
  const NAMES = { p: "pending", r: "running", d: "done", f: "failed", s: "skipped" };
  const BAR_COLOURS = { d: "#52b788", f: "#d62828", s: "#e9c46a", r: "#48a9d6" };
  const MAX_BARS = 20000; // finished bars kept by the page
  const WINDOW = 120; // seconds of the task stream shown once a run is longer
  const NODE_W = 130, NODE_H = 22, GAP_X = 40, GAP_Y = 8;

  let graph = null; // the "graph" message
  let nodeEls = []; // per node: its <g>
  let shares = []; // per node (by function): its status bar <rect>s
  let lastStatus = "";
  let state = null; // the latest "state" message
  let ended = false;
  const bars = [];

  // -- the stream ---------------------------------------------------------------
  const source = new EventSource("events?token=" + encodeURIComponent(token));
  source.addEventListener("graph", (e) => drawGraph(JSON.parse(e.data)));
  source.addEventListener("state", (e) => showState(JSON.parse(e.data)));
  source.addEventListener("bars", (e) => addBars(JSON.parse(e.data)));
  source.addEventListener("end", () => {
    ended = true;
    source.close();
    setStatus(state && (state.counts.failed || state.stopped_by) ? "failed" : "ended");
  });
  source.onerror = () => {
    if (ended || source.readyState === EventSource.CLOSED) {
      if (!ended) setStatus("disconnected");
      return;
    }
    // the run ended and its server with it, or the network failed: do not retry forever
    source.close();
    setStatus("disconnected");
  };

  function setStatus(text) {
    const el = $("run-status");
    el.textContent = text === "ended" ? "run ended" : text === "failed" ? "run ended with failures" : text;
    el.className = "status-" + text;
    document.body.dataset.run = text;
  }

  // -- the graph --------------------------------------------------------------------
  function drawGraph(g) {
    graph = g;
    document.title = "taskmap: " + g.name;
    $("graph-name").textContent = g.name;
    $("graph-note").textContent = g.by_function
      ? `${g.tasks.toLocaleString()} tasks: one node per function`
      : `${g.tasks.toLocaleString()} tasks in ${g.layers} layers` +
        (g.edges_left_out ? `, ${g.edges_left_out} edges not drawn` : "");
    const x = (layer) => 6 + layer * (NODE_W + GAP_X);
    const y = (pos) => 6 + pos * (NODE_H + GAP_Y);
    const width = x(g.layers) + 6, height = y(g.width) + 6;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    // every edge in one path: one element however many edges there are
    const d = [];
    for (const [a, b] of g.edges) {
      const na = g.nodes[a], nb = g.nodes[b];
      const x1 = x(na[1]) + NODE_W, y1 = y(na[2]) + NODE_H / 2, x2 = x(nb[1]), y2 = y(nb[2]) + NODE_H / 2;
      const mx = (x1 + x2) / 2;
      d.push(`M${x1} ${y1}C${mx} ${y1} ${mx} ${y2} ${x2} ${y2}`);
    }
    const edges = document.createElementNS(SVG, "path");
    edges.setAttribute("class", "edges");
    edges.setAttribute("d", d.join(""));
    svg.appendChild(edges);
    nodeEls = [];
    shares = [];
    g.nodes.forEach(([label, layer, pos, lane, size], i) => {
      const el = document.createElementNS(SVG, "g");
      el.setAttribute("class", "node " + lane);
      el.setAttribute("transform", `translate(${x(layer)},${y(pos)})`);
      el.dataset.node = String(i);
      el.dataset.label = label;
      el.dataset.status = "p";
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "box");
      rect.setAttribute("width", NODE_W);
      rect.setAttribute("height", NODE_H);
      const title = document.createElementNS(SVG, "title");
      title.textContent = label;
      el.append(rect, title);
      if (g.by_function) {
        const parts = {};
        for (const letter of LETTERS) {
          const share = document.createElementNS(SVG, "rect");
          share.setAttribute("class", "share " + letter);
          share.setAttribute("y", NODE_H - 5);
          share.setAttribute("height", 4);
          share.setAttribute("width", 0);
          el.appendChild(share);
          parts[letter] = share;
        }
        shares.push(parts);
      }
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", 5);
      text.setAttribute("y", g.by_function ? 12 : 15);
      text.textContent = label.length > 21 ? label.slice(0, 20) + "…" : label;
      el.appendChild(text);
      svg.appendChild(el);
      nodeEls.push(el);
    });
    const box = $("graph");
    box.replaceChildren(svg);
    lastStatus = "";
    if (state) colourNodes(state);
  }

  function colourNodes(s) {
    if (!graph) return;
    if (s.status !== undefined) {
      const st = s.status;
      for (let i = 0; i < st.length && i < nodeEls.length; i++) {
        if (st[i] !== lastStatus[i]) nodeEls[i].dataset.status = st[i];
      }
      lastStatus = st;
    } else if (s.groups) {
      s.groups.forEach((counts, i) => {
        const el = nodeEls[i];
        if (!el) return;
        const total = counts.reduce((a, b) => a + b, 0) || 1;
        // the node's colour: failed if any failed, else running if any runs, else the most common
        let status = "p";
        if (counts[3]) status = "f";
        else if (counts[1]) status = "r";
        else if (counts[2] === total) status = "d";
        else if (counts[2] + counts[4] === total) status = counts[4] ? "s" : "d";
        el.dataset.status = status;
        el.dataset.counts = counts.join(",");
        let left = 0;
        LETTERS.split("").forEach((letter, k) => {
          const w = (NODE_W * counts[k]) / total;
          const r = shares[i][letter];
          r.setAttribute("x", left);
          r.setAttribute("width", w);
          left += w;
        });
        el.querySelector("title").textContent =
          el.dataset.label + ": " + LETTERS.split("").map((l, k) => `${counts[k]} ${NAMES[l]}`).join(", ");
      });
    }
  }

  // -- counts, rate, ETA, failures, resources ---------------------------------------------
  function seconds(t) {
    if (t === null || t === undefined) return "-";
    if (t < 60) return t.toFixed(t < 10 ? 1 : 0) + " s";
    const m = Math.floor(t / 60), sec = Math.round(t % 60);
    return m < 60 ? `${m} min ${sec} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function showState(s) {
    state = s;
    const c = s.counts;
    for (const key of ["done", "failed", "skipped", "running", "pending", "total"]) {
      $("count-" + key).textContent = c[key].toLocaleString();
    }
    if (c.waiting !== undefined) {
      $("waiting-box").hidden = false;
      $("count-waiting").textContent = c.waiting.toLocaleString();
    }
    const total = c.total || 1;
    for (const key of ["done", "failed", "skipped", "running"]) {
      $("progress-" + key).style.width = (100 * c[key]) / total + "%";
    }
    $("elapsed").textContent = seconds(s.elapsed);
    $("rate").textContent = s.rate ? s.rate.toFixed(s.rate < 10 ? 1 : 0) + " tasks/s" : "-";
    $("eta").textContent = s.ended ? "-" : seconds(s.eta);
    $("run-where").textContent =
      `${s.runner}, ${s.ncores} ${s.ncores === 1 ? "worker" : "workers"}` +
      (s.stopped_by ? ` — stopped by ${s.stopped_by}` : "");
    if (!ended) setStatus(s.ended ? "ended" : "running");
    colourNodes(s);
    showFailures(s);
    showResources(s.resources);
    drawStream();
  }

  function showFailures(s) {
    const list = $("failures");
    $("failures-note").textContent = s.counts.failed > s.failures.length ? `(the last ${s.failures.length})` : "";
    if (!s.failures.length) {
      list.replaceChildren(Object.assign(document.createElement("li"), { className: "none", textContent: "none" }));
      return;
    }
    const items = s.failures
      .slice()
      .reverse()
      .map((f) => {
        const li = document.createElement("li");
        li.dataset.task = f.task;
        const head = document.createElement("div");
        const name = Object.assign(document.createElement("span"), { className: "task", textContent: f.task });
        const error = Object.assign(document.createElement("span"), { className: "error", textContent: f.error });
        head.append(name, ": ", error);
        li.appendChild(head);
        for (const [key, label] of [["output", "output (tail)"], ["traceback", "traceback"]]) {
          if (!f[key]) continue;
          const details = document.createElement("details");
          details.className = key;
          if (key === "output") details.open = true;
          details.append(
            Object.assign(document.createElement("summary"), { textContent: label }),
            Object.assign(document.createElement("pre"), { textContent: f[key] })
          );
          li.appendChild(details);
        }
        return li;
      });
    list.replaceChildren(...items);
  }

  function showResources(resources) {
    $("resources-panel").hidden = !resources.length;
    const rows = resources.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.resource = r.name;
      for (const v of [r.name, r.in_use, r.limit === null ? "-" : r.limit, r.rate === null ? "-" : r.rate]) {
        tr.appendChild(Object.assign(document.createElement("td"), { textContent: String(v) }));
      }
      return tr;
    });
    $("resources").tBodies[0].replaceChildren(...rows);
  }

  // -- the task stream ------------------------------------------------------------------
  function addBars(list) {
    for (const bar of list) bars.push(bar);
    if (bars.length > MAX_BARS) bars.splice(0, bars.length - MAX_BARS);
    drawStream();
  }

  let drawn = []; // [x0, x1, y0, y1, bar] of the bars drawn last, for the tooltip

  function lanesOf(s) {
    // rows: the coordinator first (in-process runners), then workers as they appeared; cpu above io
    const workers = [];
    if (s.workers.includes(s.coordinator)) workers.push(s.coordinator);
    for (const w of s.workers) if (w !== s.coordinator) workers.push(w);
    const rows = [];
    for (const w of workers) for (const lane of ["cpu", "io"]) rows.push([w, lane]);
    return rows;
  }

  function drawStream() {
    if (!state) return;
    const canvas = $("stream");
    const rows = lanesOf(state);
    const ROW = 18, LABEL = 110, AXIS = 16;
    const width = canvas.clientWidth || 800;
    const height = Math.max(1, rows.length) * ROW + AXIS;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.height = height + "px";
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const t1 = Math.max(state.elapsed, 0.001);
    const t0 = t1 > WINDOW ? t1 - WINDOW : 0;
    $("stream-note").textContent = t0 > 0 ? `(the last ${WINDOW} s)` : "";
    const sx = (t) => LABEL + ((t - t0) / (t1 - t0)) * (width - LABEL - 4);
    const rowOf = new Map(rows.map(([w, lane], k) => [w + " " + lane, k]));
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    rows.forEach(([w, lane], k) => {
      ctx.fillStyle = k % 2 ? "#fafafa" : "#f0f0f0";
      ctx.fillRect(LABEL, k * ROW, width - LABEL, ROW);
      ctx.fillStyle = "#333";
      const who = w === state.coordinator ? "coordinator" : "worker " + w;
      ctx.fillText(`${who} ${lane}`, 2, k * ROW + ROW / 2);
    });
    drawn = [];
    const put = (bar, end, colour) => {
      const k = rowOf.get(bar[1] + " " + bar[2]);
      if (k === undefined || end < t0) return;
      const x0 = sx(Math.max(bar[3], t0));
      // a pixel between a task and the next one in its row, when there is room
      const x1 = Math.max(x0 + 1, sx(end) - (sx(end) - x0 > 3 ? 1 : 0));
      ctx.fillStyle = colour;
      ctx.globalAlpha = bar[2] === "io" ? 0.55 : 0.9; // overlapping io tasks show as darker
      ctx.fillRect(x0, k * ROW + 2, x1 - x0, ROW - 4);
      drawn.push([x0, x1, k * ROW, (k + 1) * ROW, bar, end]);
    };
    for (const bar of bars) put(bar, bar[4], BAR_COLOURS[bar[5]] || "#888");
    for (const run of state.running) put(run, t1, BAR_COLOURS.r);
    ctx.globalAlpha = 1;
    // the time axis
    ctx.fillStyle = "#555";
    const axisY = rows.length * ROW + AXIS / 2;
    const step = niceStep((t1 - t0) / 6);
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      ctx.fillRect(sx(t), rows.length * ROW, 1, 4);
      ctx.fillText(seconds(t), sx(t) + 2, axisY);
    }
  }

  function niceStep(raw) {
    const p = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
    return 10 * p;
  }

  $("stream").addEventListener("mousemove", (e) => {
    const rect = e.target.getBoundingClientRect();
    const x = e.clientX - rect.left, y = e.clientY - rect.top;
    const tip = $("stream-tip");
    const hit = drawn.find(([x0, x1, y0, y1]) => x >= x0 && x <= x1 && y >= y0 && y <= y1);
    if (!hit) {
      tip.hidden = true;
      return;
    }
    const [, , , , bar, end] = hit;
    const status = bar.length > 5 ? NAMES[bar[5]] : "running";
    tip.textContent = `${bar[0]} — ${status}, ${seconds(end - bar[3])}`;
    tip.style.left = x + 12 + "px";
    tip.style.top = y + 8 + "px";
    tip.hidden = false;
  });
  window.addEventListener("resize", drawStream);
})();
