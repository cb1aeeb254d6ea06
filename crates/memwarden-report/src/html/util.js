// Shared by every part of the page: the data island, DOM builders that only ever set text
// (never markup), sizes formatted as memwarden's terminal formats them, and frame names.

const DATA = JSON.parse(document.getElementById("memwarden-data").textContent);
const STRINGS = DATA.strings;
const SVG_NS = "http://www.w3.org/2000/svg";
const OTHER_FILE = "<other>";

// An element with attributes (`text` sets textContent, `class` the class, `on*` a
// listener) and children (nodes or strings, added as text).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attrs);
  return node;
}

function setAttributes(node, attrs) {
  for (const key in attrs || {}) {
    const value = attrs[key];
    if (value === null || value === undefined) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

// memwarden_format::units::format_size: binary units, two decimals, bytes under 1 KiB.
function formatSize(bytes) {
  if (bytes === null || bytes === undefined) return "n/a";
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  if (bytes < 1024) return bytes + " B";
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit + 1 < units.length) {
    value /= 1024;
    unit += 1;
  }
  return value.toFixed(2) + " " + units[unit];
}

function formatSeconds(seconds) {
  return seconds.toFixed(seconds < 10 ? 2 : 1) + " s";
}

function formatShare(part, whole) {
  if (!whole) return "";
  const share = (part * 100) / whole;
  return (share >= 10 || share === 0 ? share.toFixed(0) : share.toFixed(1)) + "%";
}

function formatCount(count) {
  return count.toLocaleString("en-US");
}

// A frame of the interned table: names exactly as the report has them (`\xNN` included).
const FRAME_CACHE = new Map();
function frameOf(id) {
  let frame = FRAME_CACHE.get(id);
  if (frame) return frame;
  const row = DATA.frames[id];
  frame = {
    file: STRINGS[row[0]],
    line: row[1],
    fn: STRINGS[row[2]],
    imports: row[3] >= 0 ? STRINGS[row[3]] : null,
    source: row[4] >= 0 ? STRINGS[row[4]] : null,
    library: row[5] === 1,
  };
  frame.other = frame.file === OTHER_FILE;
  frame.kind = frameKind(frame);
  FRAME_CACHE.set(id, frame);
  return frame;
}

function frameKind(frame) {
  if (frame.other) return "other";
  if (frame.imports !== null) return "import";
  if (frame.library) return "lib";
  if (frame.line === 0) return "native";
  return "user";
}

// Paths shortened the way a reader names them: relative to the run's directory, or from
// the package (`numpy/_core/numeric.py`), or from the standard library.
function shortPath(file) {
  if (DATA.cwd && file.startsWith(DATA.cwd + "/")) return file.slice(DATA.cwd.length + 1);
  const packages = /\/(site|dist)-packages\//.exec(file);
  if (packages) return file.slice(packages.index + packages[0].length);
  const stdlib = /\/lib\/python\d+\.\d+t?\//.exec(file);
  if (stdlib) return file.slice(stdlib.index + stdlib[0].length);
  return file;
}

function importNote(frame) {
  return frame.imports === null ? "" : "[import " + frame.imports + "]";
}

// `file:line`, or the file alone when there is no line.
function whereOf(frame) {
  if (frame.other) return "";
  return frame.line > 0 ? shortPath(frame.file) + ":" + frame.line : shortPath(frame.file);
}

// The name a frame is shown by: its function, `[import NAME]` first when it imported.
function frameLabel(frame) {
  if (frame.other) return frame.fn;
  const note = importNote(frame);
  return note ? note + " " + frame.fn : frame.fn;
}

// A stack held somewhere, as a disclosure: bytes, the allocating line and its source, and
// when that line is a library's, the user's line that called it; opened, every frame,
// innermost first.
function stackView(stackId, bytes, total, testid) {
  const frames = DATA.stacks[stackId].map(frameOf);
  const leaf = frames.find((f) => f.line > 0) || frames[0];
  const caller = leaf && leaf.kind !== "user" ? frames.find((f) => f.kind === "user") : null;
  const summary = el(
    "summary",
    {},
    el("span", { class: "bytes", text: formatSize(bytes) }),
    el("span", { class: "share", text: formatShare(bytes, total) }),
    leaf ? el("span", { class: "fn", text: frameLabel(leaf) }) : null,
    leaf ? el("span", { class: "where", text: whereOf(leaf), title: leaf.file }) : null,
    leaf && leaf.source ? el("code", { class: "src lead", text: leaf.source }) : null,
    caller
      ? el(
          "span",
          { class: "caller", "data-testid": "stack-caller" },
          el("span", { class: "from", text: "called from" }),
          el("span", { class: "fn", text: frameLabel(caller) }),
          el("span", { class: "where", text: whereOf(caller), title: caller.file }),
          caller.source ? el("code", { class: "src", text: caller.source }) : null,
        )
      : null,
  );
  const body = el("ol", { class: "frames" });
  for (const frame of frames) {
    body.appendChild(
      el(
        "li",
        { class: "kind-" + frame.kind },
        el("span", { class: "fn", text: frameLabel(frame) }),
        el("span", { class: "where", text: whereOf(frame), title: frame.file }),
        frame.source ? el("code", { class: "src", text: frame.source }) : null,
      ),
    );
  }
  const details = el("details", { class: "stack", "data-testid": testid }, summary);
  details.appendChild(body);
  return details;
}
