// The per-line table (sortable) and the per-process table (a row shows that process's
// stacks at its own peak).

function LinesTable(root) {
  const table = root.querySelector("[data-testid=lines]");
  if (!DATA.mode || !DATA.lines.length) {
    table.replaceWith(el("p", { class: "empty", text: DATA.mode ? "No line held or allocated memory." : "The per-line table needs the allocation profile (memwarden run --profile)." }));
    return;
  }
  const peak = DATA.peak.heap_bytes || 0;
  const rows = DATA.lines.map(([frame, peakBytes, small, leaked, allocated, allocations]) => ({
    frame: frameOf(frame), peakBytes, small, leaked, allocated, allocations,
  }));
  const countName = DATA.mode === "sampled" ? "Samples" : "Allocations";
  const columns = [
    { key: "line", title: "Line", text: true, value: (r) => whereOf(r.frame) + " " + r.frame.fn },
    { key: "source", title: "Source", text: true, value: (r) => r.frame.source || "" },
    { key: "peak", title: "At peak", value: (r) => r.peakBytes, show: (r) => formatSize(r.peakBytes) },
    { key: "share", title: "Share of peak", value: (r) => r.peakBytes, show: (r) => formatShare(r.peakBytes, peak) },
    { key: "allocated", title: "Allocated", value: (r) => r.allocated, show: (r) => formatSize(r.allocated) },
    { key: "count", title: countName, value: (r) => r.allocations, show: (r) => formatCount(r.allocations) },
    { key: "leaked", title: "Held at exit", value: (r) => r.leaked, show: (r) => formatSize(r.leaked) },
  ];
  let sortKey = "peak";
  let descending = true;
  const head = el("tr");
  for (const column of columns) {
    head.appendChild(el("th", {
      class: column.text ? "text" : "num",
      "data-testid": "lines-th-" + column.key,
      onclick: () => {
        if (sortKey === column.key) descending = !descending;
        else {
          sortKey = column.key;
          descending = !column.text;
        }
        render();
      },
    }, column.title));
  }
  const body = el("tbody");
  table.appendChild(el("thead", {}, head));
  table.appendChild(body);

  function lineCell(r) {
    return el("td", { class: "text line kind-" + r.frame.kind },
      el("span", { class: "where", text: whereOf(r.frame), title: r.frame.file }),
      el("span", { class: "fn", text: r.frame.fn }),
      r.frame.imports !== null ? el("span", { class: "chip import", text: importNote(r.frame) }) : null);
  }

  function render() {
    const column = columns.find((c) => c.key === sortKey);
    const sign = descending ? -1 : 1;
    const sorted = rows.slice().sort((a, b) => {
      const x = column.value(a), y = column.value(b);
      const order = column.text ? String(x).localeCompare(String(y)) : x - y;
      return order * sign || (b.peakBytes - a.peakBytes);
    });
    for (const th of head.children) {
      const on = th.dataset.testid === "lines-th-" + sortKey;
      th.classList.toggle("sorted", on);
      th.setAttribute("aria-sort", on ? (descending ? "descending" : "ascending") : "none");
    }
    table.dataset.sort = sortKey + (descending ? ":desc" : ":asc");
    clear(body);
    for (const r of sorted) {
      const tr = el("tr", { "data-testid": "lines-row" }, lineCell(r),
        el("td", { class: "text" }, r.frame.source ? el("code", { class: "src", text: r.frame.source }) : null));
      for (const c of columns.slice(2)) tr.appendChild(el("td", { class: "num", text: c.show(r) }));
      body.appendChild(tr);
    }
  }
  render();
}

function ProcessTable(root) {
  const table = root.querySelector("[data-testid=processes]");
  const stacksBox = root.querySelector("[data-testid=process-stacks]");
  const head = el("tr", {}, ...["pid", "ppid", "Command line", "Alive", "Peak RSS", "PSS", "Heap peak", "Held at exit", "Exited cleanly"]
    .map((title, i) => el("th", { class: i === 2 ? "text" : "num", text: title })));
  const body = el("tbody");
  table.appendChild(el("thead", {}, head));
  table.appendChild(body);
  let selectedRow = null;

  function show(process, tr) {
    if (selectedRow) selectedRow.classList.remove("selected");
    selectedRow = tr;
    tr.classList.add("selected");
    clear(stacksBox);
    stacksBox.dataset.pid = String(process.pid);
    stacksBox.appendChild(el("h3", { text: "pid " + process.pid + " at its heap peak" + (process.heap_bytes !== null ? ": " + formatSize(process.heap_bytes) : "") }));
    if (!process.at_peak.length) {
      stacksBox.appendChild(el("p", { class: "empty", text: DATA.mode ? "No stacks were recorded for this process (not Python, or it left no capture)." : "Stacks need the allocation profile (memwarden run --profile)." }));
    }
    for (const [stack, bytes] of process.at_peak) {
      stacksBox.appendChild(stackView(stack, bytes, process.heap_bytes, "process-stack"));
    }
  }

  DATA.processes.forEach((p) => {
    const clean = p.exited_cleanly === null ? "n/a" : p.exited_cleanly ? "yes" : "no";
    const tr = el("tr", { "data-testid": "process-row", "data-pid": p.pid },
      el("td", { class: "num", text: String(p.pid) }),
      el("td", { class: "num", text: String(p.ppid) }),
      el("td", { class: "text cmd", title: p.cmdline.join(" "), text: p.cmdline.join(" ") || "(unknown)" }),
      el("td", { class: "num", text: formatSeconds(p.first_seen_s) + " – " + formatSeconds(p.last_seen_s) }),
      el("td", { class: "num" }, formatSize(p.rss_bytes), p.rss_source ? el("div", { class: "source", text: p.rss_source }) : null),
      el("td", { class: "num", text: formatSize(p.pss_bytes) }),
      el("td", { class: "num", text: formatSize(p.heap_bytes) }),
      el("td", { class: "num", text: formatSize(p.leaked_bytes) }),
      el("td", { class: "num " + (p.exited_cleanly === false ? "warn" : ""), text: clean }));
    tr.addEventListener("click", () => show(p, tr));
    body.appendChild(tr);
  });
  root.querySelector("[data-testid=process-count]").textContent =
    DATA.processes.length + " process" + (DATA.processes.length === 1 ? "" : "es");
  const first = body.querySelector("tr");
  if (first) show(DATA.processes[0], first);
}

function start() {
  Timeline(document.getElementById("timeline"));
  FlameGraph(document.getElementById("flame"));
  LinesTable(document.getElementById("lines"));
  ProcessTable(document.getElementById("processes"));
  // When the page became usable, for the tests' check on large runs.
  document.documentElement.dataset.readyMs = String(Math.round(performance.now()));
  document.documentElement.dataset.ready = "1";
}
start();
