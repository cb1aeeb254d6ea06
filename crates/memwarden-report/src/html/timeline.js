// The timeline: the tree's resident memory, PSS, GPU and profiled heap over time, the
// budget and the tightest limit as lines, the peak marked; or, switched, each process's
// lifetime as a bar with its peaks. A click picks the nearest heap point and lists the
// stacks held then.

function Timeline(root) {
  const chart = root.querySelector("[data-testid=timeline-chart]");
  const stacksBox = root.querySelector("[data-testid=timeline-stacks]");
  const readout = root.querySelector("[data-testid=timeline-readout]");
  const heap = DATA.heap;
  const tree = DATA.timeline;
  const end = Math.max(DATA.duration_s, tree.t_s[tree.t_s.length - 1] || 0,
    heap.t_s[heap.t_s.length - 1] || 0, 0.001);
  const margin = { left: 74, right: 16, top: 14, bottom: 26 };
  let view = "tree";
  let selected = -1;
  let peakIndex = -1;
  heap.bytes.forEach((bytes, i) => {
    if (peakIndex < 0 || bytes > heap.bytes[peakIndex]) peakIndex = i;
  });
  chart.dataset.peakIndex = String(peakIndex);

  const series = [
    { key: "rss", name: "RSS", t: tree.t_s, v: tree.rss, cls: "s-rss", area: true },
    { key: "pss", name: "PSS", t: tree.t_s, v: tree.pss, cls: "s-pss" },
    { key: "heap", name: "heap (profiled)", t: heap.t_s, v: heap.bytes, cls: "s-heap" },
  ];
  if (tree.gpu) series.push({ key: "gpu", name: "GPU", t: tree.t_s, v: tree.gpu, cls: "s-gpu" });
  const shown = series.filter((s) => s.v.some((v) => v));
  let dataMax = 1;
  for (const s of shown) for (const v of s.v) if (v > dataMax) dataMax = v;
  dataMax = Math.max(dataMax, DATA.peak.rss_bytes || 0);
  // A limit far above the data would flatten it: such a line is named, not drawn.
  const lines = [];
  if (DATA.budget_bytes) lines.push({ name: "budget", bytes: DATA.budget_bytes, cls: "l-budget" });
  if (DATA.limit_bytes) {
    lines.push({ name: "limit (" + DATA.limit_source + ")", bytes: DATA.limit_bytes, cls: "l-limit" });
  }
  let yMax = dataMax;
  for (const line of lines) {
    line.onScale = line.bytes <= dataMax * 2;
    if (line.onScale) yMax = Math.max(yMax, line.bytes);
  }
  yMax = niceCeiling(yMax * 1.08);

  function niceCeiling(value) {
    const step = Math.pow(2, Math.ceil(Math.log2(value)) - 3);
    return Math.ceil(value / step) * step;
  }

  function geometry() {
    const width = Math.max(chart.clientWidth, 320);
    const rows = view === "tree" ? 0 : DATA.processes.length;
    const height = view === "tree" ? 260 : Math.max(120, rows * 22 + margin.top + margin.bottom);
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    return {
      width, height, plotW, plotH,
      x: (t) => margin.left + (t / end) * plotW,
      y: (v) => margin.top + plotH - (v / yMax) * plotH,
      tAt: (px) => Math.min(end, Math.max(0, ((px - margin.left) / plotW) * end)),
    };
  }

  function axes(svg, g, withBytes) {
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const t = (end * i) / ticks;
      const x = g.x(t);
      svg.appendChild(svgEl("line", { class: "grid", x1: x, x2: x, y1: margin.top, y2: g.height - margin.bottom }));
      const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
      svg.appendChild(svgEl("text", { class: "tick", x, y: g.height - 8, "text-anchor": anchor, text: formatSeconds(t) }));
    }
    if (!withBytes) return;
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      const y = g.y(v);
      svg.appendChild(svgEl("line", { class: "grid", x1: margin.left, x2: g.width - margin.right, y1: y, y2: y }));
      svg.appendChild(svgEl("text", { class: "tick", x: margin.left - 8, y: y + 4, "text-anchor": "end", text: formatSize(Math.round(v)) }));
    }
  }

  function path(g, s) {
    let d = "";
    for (let i = 0; i < s.t.length; i++) {
      if (s.v[i] === null) continue;
      d += (d ? "L" : "M") + g.x(s.t[i]).toFixed(1) + " " + g.y(s.v[i]).toFixed(1);
    }
    return d;
  }

  function drawTree(svg, g) {
    axes(svg, g, true);
    for (const s of shown) {
      const d = path(g, s);
      if (!d) continue;
      if (s.area) {
        const first = s.t[0], last = s.t[s.t.length - 1];
        const base = g.y(0).toFixed(1);
        svg.appendChild(svgEl("path", {
          class: "area " + s.cls,
          d: d + "L" + g.x(last).toFixed(1) + " " + base + "L" + g.x(first).toFixed(1) + " " + base + "Z",
        }));
      }
      svg.appendChild(svgEl("path", { class: "series " + s.cls, d }));
    }
    for (const line of lines.filter((l) => l.onScale)) {
      const y = g.y(line.bytes);
      svg.appendChild(svgEl("line", { class: "limit " + line.cls, x1: margin.left, x2: g.width - margin.right, y1: y, y2: y }));
      svg.appendChild(svgEl("text", { class: "limit-label " + line.cls, x: g.width - margin.right - 4, y: y - 4, "text-anchor": "end", text: line.name + " " + formatSize(line.bytes) }));
    }
    const rssX = g.x(DATA.peak.rss_at_s), rssY = g.y(DATA.peak.rss_bytes);
    svg.appendChild(svgEl("circle", { class: "peak-dot", cx: rssX, cy: rssY, r: 4.5, "data-testid": "timeline-peak" }));
    svg.appendChild(svgEl("text", {
      class: "peak-label", x: rssX + (rssX > g.width * 0.7 ? -8 : 8), y: Math.max(rssY - 6, margin.top + 10),
      "text-anchor": rssX > g.width * 0.7 ? "end" : "start", text: "peak RSS " + formatSize(DATA.peak.rss_bytes),
    }));
    if (peakIndex >= 0) {
      svg.appendChild(svgEl("circle", { class: "peak-dot heap", cx: g.x(heap.t_s[peakIndex]), cy: g.y(heap.bytes[peakIndex]), r: 3.5 }));
    }
    if (selected >= 0) {
      const x = g.x(heap.t_s[selected]);
      svg.appendChild(svgEl("line", { class: "cursor", x1: x, x2: x, y1: margin.top, y2: g.height - margin.bottom }));
      svg.appendChild(svgEl("circle", { class: "cursor-dot", cx: x, cy: g.y(heap.bytes[selected]), r: 4 }));
    }
  }

  function drawProcesses(svg, g) {
    axes(svg, g, false);
    const maxRss = Math.max(1, ...DATA.processes.map((p) => p.rss_bytes || 0));
    DATA.processes.forEach((p, i) => {
      const y = margin.top + i * 22;
      const x1 = g.x(p.first_seen_s), x2 = Math.max(g.x(p.last_seen_s), x1 + 2);
      const bar = svgEl("rect", {
        class: "life", x: x1, y: y + 3, width: x2 - x1, height: 15, rx: 2,
        "fill-opacity": (0.35 + 0.65 * ((p.rss_bytes || 0) / maxRss)).toFixed(2),
        "data-testid": "timeline-process", "data-pid": p.pid,
      });
      bar.appendChild(svgEl("title", { text: "pid " + p.pid + " " + p.cmdline.join(" ") }));
      svg.appendChild(bar);
      svg.appendChild(svgEl("text", { class: "tick", x: margin.left - 8, y: y + 15, "text-anchor": "end", text: String(p.pid) }));
      const label = "peak RSS " + formatSize(p.rss_bytes) + (p.heap_bytes !== null ? ", heap " + formatSize(p.heap_bytes) : "");
      // Inside the bar if it fits, else beside it on the side with room.
      const labelPx = label.length * 6.5 + 10;
      const inside = x2 - x1 > labelPx;
      const right = x2 + labelPx < g.width - margin.right;
      svg.appendChild(svgEl("text", {
        class: inside ? "life-label inside" : "life-label",
        x: inside ? x1 + 6 : right ? x2 + 6 : x1 - 6,
        "text-anchor": inside || right ? "start" : "end",
        y: y + 15,
        text: label,
      }));
    });
  }

  function draw() {
    clear(chart);
    const g = geometry();
    const svg = svgEl("svg", { width: g.width, height: g.height, viewBox: "0 0 " + g.width + " " + g.height, class: "chart" });
    if (view === "tree") drawTree(svg, g);
    else drawProcesses(svg, g);
    svg.addEventListener("click", (event) => {
      const rect = svg.getBoundingClientRect();
      selectAt(g.tAt(event.clientX - rect.left));
    });
    svg.addEventListener("mousemove", (event) => {
      const rect = svg.getBoundingClientRect();
      readout.textContent = describeMoment(g.tAt(event.clientX - rect.left));
    });
    chart.appendChild(svg);
  }

  function nearest(times, t) {
    let best = -1;
    for (let i = 0; i < times.length; i++) {
      if (best < 0 || Math.abs(times[i] - t) < Math.abs(times[best] - t)) best = i;
    }
    return best;
  }

  function describeMoment(t) {
    const parts = [formatSeconds(t)];
    const i = nearest(tree.t_s, t);
    if (i >= 0) parts.push("RSS " + formatSize(tree.rss[i]), "PSS " + formatSize(tree.pss[i]));
    const h = nearest(heap.t_s, t);
    if (h >= 0) parts.push("heap " + formatSize(heap.bytes[h]));
    return parts.join("   ");
  }

  function selectAt(t) {
    select(nearest(heap.t_s, t));
  }

  function select(index) {
    if (index < 0) {
      clear(stacksBox);
      stacksBox.appendChild(el("p", { class: "empty", text: DATA.mode ? "No heap was sampled over time." : "Stacks over time need the allocation profile (memwarden run --profile)." }));
      return;
    }
    selected = index;
    chart.dataset.selectedIndex = String(index);
    chart.dataset.selectedT = String(heap.t_s[index]);
    draw();
    clear(stacksBox);
    const isPeak = index === peakIndex;
    stacksBox.appendChild(el("h3", {},
      "Held at " + formatSeconds(heap.t_s[index]) + ": heap " + formatSize(heap.bytes[index]),
      isPeak ? el("span", { class: "chip accent", text: "heap peak" }) : null));
    if (!heap.top[index].length) stacksBox.appendChild(el("p", { class: "empty", text: "No stack held memory then." }));
    for (const [stack, bytes] of heap.top[index]) {
      stacksBox.appendChild(stackView(stack, bytes, heap.bytes[index], "timeline-stack"));
    }
  }

  for (const button of root.querySelectorAll("[data-view]")) {
    button.addEventListener("click", () => {
      view = button.dataset.view;
      for (const b of root.querySelectorAll("[data-view]")) b.classList.toggle("on", b === button);
      legend.hidden = view !== "tree";
      draw();
    });
  }
  root.querySelector("[data-testid=timeline-jump-peak]").addEventListener("click", () => select(peakIndex));
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(draw, 100);
  });

  const legend = root.querySelector("[data-testid=timeline-legend]");
  for (const s of shown) legend.appendChild(el("span", { class: "key " + s.cls }, el("i"), s.name));
  for (const line of lines) {
    legend.appendChild(el("span", { class: "key " + line.cls + (line.onScale ? "" : " off") }, el("i"),
      line.name + " " + formatSize(line.bytes) + (line.onScale ? "" : " (off scale)")));
  }
  draw();
  select(peakIndex);
}
