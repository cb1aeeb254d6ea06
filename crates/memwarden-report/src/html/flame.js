// The icicle graph: memory by calling stack, outermost frame on top. Click a frame to make
// it the root (click it again, or an ancestor above it, to zoom back out); search
// highlights frames and sums the bytes they hold.

const ROW_PX = 20;

function FlameGraph(root) {
  const box = root.querySelector("[data-testid=flame]");
  const details = root.querySelector("[data-testid=flame-details]");
  const search = root.querySelector("[data-testid=flame-search]");
  const status = root.querySelector("[data-testid=flame-search-status]");
  const tooltip = el("div", { class: "tooltip", "data-testid": "flame-tooltip" });
  document.body.appendChild(tooltip);
  const graphs = {
    peak: prepare(DATA.flame_peak, "all memory at the peak"),
    leaked: prepare(DATA.flame_leaked, "all memory held at exit"),
  };
  let current = graphs.peak;

  function prepare(table, rootName) {
    const count = table.parent.length;
    const children = Array.from({ length: count }, () => []);
    for (let i = 1; i < count; i++) children[table.parent[i]].push(i);
    return { table, children, zoom: 0, rootName, matches: null };
  }

  function frameOfNode(graph, node) {
    return node === 0 ? null : frameOf(graph.table.frame[node]);
  }

  function nodeLabel(graph, node) {
    const frame = frameOfNode(graph, node);
    return frame ? frameLabel(frame) : graph.rootName;
  }

  function ancestors(graph, node) {
    const chain = [];
    for (let n = graph.table.parent[node]; n >= 0; n = graph.table.parent[n]) chain.unshift(n);
    return chain;
  }

  function draw() {
    clear(box);
    const graph = current;
    const table = graph.table;
    if (table.parent.length <= 1) {
      box.style.height = "";
      box.appendChild(el("p", { class: "empty", text: emptyText() }));
      return;
    }
    const width = Math.max(box.clientWidth, 320);
    const minFraction = 0.5 / width;
    const zoomBytes = table.bytes[graph.zoom] || 1;
    const fragment = document.createDocumentFragment();
    const chain = ancestors(graph, graph.zoom);
    chain.forEach((node, depth) => fragment.appendChild(frameBox(graph, node, 0, 1, depth, "ancestor")));
    let maxDepth = chain.length;
    const stack = [[graph.zoom, 0, chain.length]];
    while (stack.length) {
      const [node, x, depth] = stack.pop();
      const w = table.bytes[node] / zoomBytes;
      fragment.appendChild(frameBox(graph, node, x, w, depth, node === graph.zoom ? "zoomed" : ""));
      maxDepth = Math.max(maxDepth, depth);
      let childX = x;
      for (const child of graph.children[node]) {
        const childW = table.bytes[child] / zoomBytes;
        if (childW < minFraction) break;
        stack.push([child, childX, depth + 1]);
        childX += childW;
      }
    }
    box.style.height = (maxDepth + 1) * ROW_PX + "px";
    box.dataset.zoom = String(graph.zoom);
    box.appendChild(fragment);
  }

  function emptyText() {
    if (!DATA.mode) return "The flame graph needs the allocation profile (memwarden run --profile).";
    return current === graphs.leaked ? "Nothing was held at exit." : "No memory was recorded at the peak.";
  }

  function frameBox(graph, node, x, w, depth, extra) {
    const frame = frameOfNode(graph, node);
    const classes = ["frame", frame ? "kind-" + frame.kind : "kind-root"];
    if (extra) classes.push(extra);
    if (graph.matches && graph.matches.has(node)) classes.push("match");
    const div = el("div", {
      class: classes.join(" "),
      "data-testid": "flame-frame",
      "data-node": node,
      style: "left:" + (x * 100).toFixed(4) + "%;width:" + (w * 100).toFixed(4) + "%;top:" + depth * ROW_PX + "px",
    });
    if (w * box.clientWidth > 28) {
      const label = nodeLabel(graph, node);
      div.textContent = frame && frame.line > 0 ? label + "  " + whereOf(frame) : label;
    }
    return div;
  }

  function nodeAt(target) {
    const div = target.closest("[data-testid=flame-frame]");
    return div ? Number(div.dataset.node) : -1;
  }

  function describe(graph, node) {
    const table = graph.table;
    const frame = frameOfNode(graph, node);
    const total = table.bytes[0];
    const parts = [
      el("div", { class: "tt-name", text: nodeLabel(graph, node) }),
      frame && !frame.other ? el("div", { class: "tt-where", text: whereOf(frame) }) : null,
      frame && frame.source ? el("code", { class: "src", text: frame.source }) : null,
      el("div", { class: "tt-bytes", text: formatSize(table.bytes[node]) + ", " + formatShare(table.bytes[node], total) + " of " + formatSize(total) }),
    ];
    if (graph.zoom !== 0 && node !== 0) {
      parts.push(el("div", { class: "tt-share", text: formatShare(table.bytes[node], table.bytes[graph.zoom]) + " of the zoomed frame" }));
    }
    return parts;
  }

  box.addEventListener("click", (event) => {
    const node = nodeAt(event.target);
    if (node < 0) return;
    const graph = current;
    graph.zoom = node === graph.zoom && node !== 0 ? graph.table.parent[node] : node;
    clear(details);
    for (const part of describe(graph, node)) if (part) details.appendChild(part);
    draw();
  });
  box.addEventListener("mousemove", (event) => {
    const node = nodeAt(event.target);
    if (node < 0) {
      tooltip.style.display = "none";
      return;
    }
    clear(tooltip);
    for (const part of describe(current, node)) if (part) tooltip.appendChild(part);
    tooltip.style.display = "block";
    const x = Math.min(event.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8);
    const y = event.clientY + 18 + tooltip.offsetHeight > window.innerHeight ? event.clientY - tooltip.offsetHeight - 10 : event.clientY + 18;
    tooltip.style.left = x + "px";
    tooltip.style.top = y + "px";
  });
  box.addEventListener("mouseleave", () => {
    tooltip.style.display = "none";
  });

  // Matching frames, and the bytes they hold counted once: a match inside a match adds
  // nothing (its bytes are already in its ancestor's).
  function applySearch() {
    const query = search.value.trim().toLowerCase();
    let matched = 0;
    let bytes = 0;
    for (const graph of Object.values(graphs)) {
      graph.matches = null;
      if (!query) continue;
      const table = graph.table;
      graph.matches = new Set();
      const inMatch = new Uint8Array(table.parent.length);
      for (let node = 1; node < table.parent.length; node++) {
        const frame = frameOf(table.frame[node]);
        const text = (frameLabel(frame) + " " + frame.file + ":" + frame.line).toLowerCase();
        const parentInMatch = inMatch[table.parent[node]] === 1;
        if (text.includes(query)) {
          graph.matches.add(node);
          if (graph === current) {
            matched += 1;
            if (!parentInMatch) bytes += table.bytes[node];
          }
          inMatch[node] = 1;
        } else {
          inMatch[node] = parentInMatch ? 1 : 0;
        }
      }
    }
    status.dataset.matches = String(matched);
    status.dataset.bytes = String(bytes);
    status.textContent = query
      ? matched + " frame" + (matched === 1 ? "" : "s") + " match, holding " + formatSize(bytes) + " (" + (formatShare(bytes, current.table.bytes[0]) || "0%") + ")"
      : "";
    draw();
  }
  search.addEventListener("input", applySearch);

  for (const tab of root.querySelectorAll("[data-flame]")) {
    tab.addEventListener("click", () => {
      current = graphs[tab.dataset.flame];
      for (const t of root.querySelectorAll("[data-flame]")) t.classList.toggle("on", t === tab);
      clear(details);
      applySearch();
    });
  }
  root.querySelector("[data-testid=flame-reset]").addEventListener("click", () => {
    current.zoom = 0;
    draw();
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(draw, 100);
  });
  draw();
}
