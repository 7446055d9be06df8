// ftune board: what every page shares. Pages build their content from the JSON endpoints under /api with el(),
// which puts every string into the page as text: rows come from datasets and are never parsed as HTML.
"use strict";

const board = (() => {
  const main = document.getElementById("main");

  // Each path segment of an id encoded on its own: ids hold "/" (a run's path under its board folder).
  function idPath(id) {
    return String(id).split("/").map(encodeURIComponent).join("/");
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "") q.set(key, value);
    }
    const text = q.toString();
    return text ? "?" + text : "";
  }

  class ApiError extends Error {
    constructor(message, status, code) { super(message); this.status = status; this.code = code; }
  }

  // The endpoint's JSON; an ApiError with the endpoint's own message when it answers an error.
  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (exc) {
      throw new ApiError("The board does not answer (is ftune board still running?)", 0);
    }
    let body = null;
    try { body = await response.json(); } catch (exc) { body = null; }
    if (!response.ok) {
      const error = body && body.error;
      const message = (error && (error.message || (typeof error === "string" && error)))
        || `${response.status} ${response.statusText}`;
      throw new ApiError(message, response.status, error && error.code);
    }
    return body;
  }

  // An element: attrs are properties (class, href, ...) or "data-*"/"aria-*" attributes; children are nodes or
  // text (null and undefined are skipped).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "scope"
               || key === "for") node.setAttribute(key, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node[key] = value;
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  function showError(message) {
    const box = document.getElementById("page-error");
    if (!message) { box.hidden = true; box.replaceChildren(); return; }
    fill(box, el("strong", {}, "Cannot show this: "), message);
    box.hidden = false;
  }

  function number(value, digits = 4) {
    if (value === null || value === undefined || value === "") return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return value.toLocaleString("en");
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
    return value.toFixed(digits);
  }

  // A figure with four decimals always (a table column of scores reads best aligned).
  function decimal(value) {
    return typeof value === "number" ? value.toFixed(4) : number(value);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  }

  function when(iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    return date.toLocaleString("en-GB", {year: "numeric", month: "short", day: "numeric", hour: "2-digit",
                                         minute: "2-digit"});
  }

  // Run statuses (ftune runs) and sweep trial states (Optuna's).
  const STATUS_CLASS = {"finished": "ok", "in use": "live", "interrupted": "warn", "complete": "ok", "running": "live",
                        "pruned": "warn", "fail": "bad", "failed": "bad"};

  function status(text) {
    return el("span", {class: `badge ${STATUS_CLASS[text] || "muted-badge"}`}, text || "unknown");
  }

  // The last part of a local path (a model or data folder); a Hub id as it is.
  function shortName(value) {
    if (!value) return "–";
    const text = String(value);
    return text.startsWith("/") || text.startsWith(".") ? text.replace(/\/+$/, "").split("/").pop() : text;
  }

  function metricName(name) {
    return String(name).replace(/^eval_/, "");
  }

  // A confusion matrix as a table of buttons; onCell(reference, prediction) on a click. `selected` is
  // [reference, prediction] or null. Cell colour: the share of its reference row.
  function confusionMatrix(matrix, onCell, selected) {
    const labels = matrix.labels;
    const head = el("tr", {}, el("th", {scope: "col", class: "corner"},
                                 el("span", {class: "visually-hidden"}, "reference, then prediction")),
                    labels.map((label) => el("th", {scope: "col", title: label}, label)));
    const body = labels.map((reference, i) => {
      const total = matrix.matrix[i].reduce((a, b) => a + b, 0) || 1;
      return el("tr", {}, el("th", {scope: "row", title: reference}, reference), matrix.matrix[i].map((count, j) => {
        const prediction = labels[j];
        const share = count / total;
        const isSelected = selected && selected[0] === reference && selected[1] === prediction;
        const cell = el("button", {
          type: "button",
          class: `cell ${i === j ? "diagonal" : "off-diagonal"}${count === 0 ? " zero" : ""}`,
          "aria-pressed": isSelected ? "true" : "false",
          "aria-label": `${count} rows with reference ${reference} predicted ${prediction}`,
          "data-reference": reference, "data-prediction": prediction,
          onclick: () => onCell(reference, prediction),
        }, String(count));
        cell.style.setProperty("--share", share.toFixed(3));
        return el("td", {}, cell);
      }));
    });
    return el("table", {class: "matrix"}, el("thead", {}, head), el("tbody", {}, body));
  }

  const PLOT_LAYOUT = {
    margin: {l: 56, r: 16, t: 40, b: 44},
    font: {family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12, color: "#1f2933"},
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff",
    colorway: ["#2563eb", "#dc6b19", "#0e9f6e", "#9333ea", "#e11d48", "#0891b2", "#65a30d", "#a16207"],
    xaxis: {gridcolor: "#e5e9f0", zerolinecolor: "#cbd2d9", automargin: true},
    yaxis: {gridcolor: "#e5e9f0", zerolinecolor: "#cbd2d9", automargin: true},
    showlegend: true, legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom"},
    hoverlabel: {bgcolor: "#1f2933", font: {color: "#ffffff"}},
  };

  // Plotly into `node` with the board's look: deep-merges `layout` over the defaults.
  function plot(node, traces, layout) {
    const merged = JSON.parse(JSON.stringify(PLOT_LAYOUT));
    for (const [key, value] of Object.entries(layout || {})) {
      merged[key] = value && typeof value === "object" && !Array.isArray(value) && merged[key]
        ? {...merged[key], ...value} : value;
    }
    return Plotly.react(node, traces, merged, {displaylogo: false, responsive: true,
                                               modeBarButtonsToRemove: ["lasso2d", "select2d"]});
  }

  // A small, safe Markdown reader for model cards: headings, paragraphs, lists, fenced code, tables, `code`,
  // **bold**, links (http, https or relative only) and pictures, whose address `picture(src)` gives (null: the
  // alt text). Everything becomes elements holding text.
  function markdown(text, picture) {
    const inline = (line) => inlineMarkdown(line, picture || (() => null));
    const out = document.createDocumentFragment();
    const lines = String(text).replace(/\r\n/g, "\n").split("\n");
    let i = 0;
    if (lines[0] === "---") {  // YAML front matter: shown as code, as the Hub's metadata block
      const end = lines.indexOf("---", 1);
      if (end > 0) { out.append(el("pre", {class: "front-matter"}, lines.slice(1, end).join("\n"))); i = end + 1; }
    }
    while (i < lines.length) {
      const line = lines[i];
      if (/^```/.test(line)) {
        const code = [];
        for (i += 1; i < lines.length && !/^```/.test(lines[i]); i += 1) code.push(lines[i]);
        out.append(el("pre", {}, el("code", {}, code.join("\n"))));
        i += 1;
      } else if (/^#{1,6}\s/.test(line)) {
        const level = Math.min(line.match(/^#+/)[0].length + 2, 6);
        out.append(el(`h${level}`, {}, inline(line.replace(/^#+\s*/, ""))));
        i += 1;
      } else if (/^\s*[-*]\s+/.test(line)) {
        const list = el("ul");
        const items = [];
        for (; i < lines.length && (/^\s*[-*]\s+/.test(lines[i]) || (items.length && /^\s+\S/.test(lines[i])));
             i += 1) {
          if (/^\s*[-*]\s+/.test(lines[i])) items.push(lines[i].replace(/^\s*[-*]\s+/, ""));
          else items[items.length - 1] += ` ${lines[i].trim()}`;   // an item's continued line
        }
        list.append(...items.map((item) => el("li", {}, inline(item))));
        out.append(list);
      } else if (/^\s*\|/.test(line)) {
        const rows = [];
        for (; i < lines.length && /^\s*\|/.test(lines[i]); i += 1) rows.push(lines[i]);
        out.append(table(rows, inline));
      } else if (!line.trim()) {
        i += 1;
      } else {
        const para = [];
        for (; i < lines.length && lines[i].trim() && !/^(```|#{1,6}\s|\s*[-*]\s+|\s*\|)/.test(lines[i]); i += 1) {
          para.push(lines[i]);
        }
        out.append(el("p", {}, inline(para.join(" "))));
      }
    }
    return out;
  }

  function table(rows, inline) {
    const cells = (row) => row.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
    const isRule = (row) => /^\s*\|?\s*:?-{2,}/.test(row);
    const head = cells(rows[0]);
    const body = rows.slice(1).filter((row) => !isRule(row)).map(cells);
    return el("div", {class: "table-wrap"}, el("table", {class: "data compact"},
      el("thead", {}, el("tr", {}, head.map((c) => el("th", {scope: "col"}, inline(c))))),
      el("tbody", {}, body.map((r) => el("tr", {}, r.map((c) => el("td", {}, inline(c))))))));
  }

  function inlineMarkdown(text, picture) {
    const nodes = [];
    const pattern = /`([^`]+)`|\*\*([^*]+)\*\*|(!?)\[([^\]]*)\]\(([^)\s]+)\)/g;
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      nodes.push(text.slice(last, match.index));
      const [, code, bold, bang, label, target] = match;
      const src = bang && picture(target);
      if (code !== undefined) nodes.push(el("code", {}, code));
      else if (bold !== undefined) nodes.push(el("strong", {}, bold));
      else if (bang) nodes.push(src ? el("img", {src, alt: label, class: "card-picture"}) : label);
      else if (/^(https?:\/\/|\/|\.\/|#)/.test(target)) nodes.push(el("a", {href: target}, label));
      else nodes.push(match[0]);
      last = match.index + match[0].length;
    }
    nodes.push(text.slice(last));
    return nodes;
  }

  // Clickable table headers: th[data-sort] cycle ascending/descending and say so to assistive technology.
  function sortableHeader(table, state, onChange) {
    for (const th of table.querySelectorAll("th[data-sort]")) {
      const key = th.dataset.sort;
      const label = th.textContent;
      const button = el("button", {type: "button", class: "sort-button"}, label, el("span", {class: "arrow"}));
      button.addEventListener("click", () => {
        state.order = state.sort === key && state.order === "asc" ? "desc" : "asc";
        state.sort = key;
        onChange();
      });
      fill(th, button);
    }
    return () => {
      for (const th of table.querySelectorAll("th[data-sort]")) {
        const active = th.dataset.sort === state.sort;
        th.setAttribute("aria-sort", active ? (state.order === "asc" ? "ascending" : "descending") : "none");
        th.querySelector(".arrow").textContent = active ? (state.order === "asc" ? " ▲" : " ▼") : "";
      }
    };
  }

  // Calls refresh() again when the tab comes back into view: a run that finished or was deleted meanwhile shows.
  function refreshOnReturn(refresh) {
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  }

  return {main, idPath, query, api, ApiError, el, append, fill, showError, number, decimal, duration, when, status,
          shortName, metricName, confusionMatrix, plot, markdown, sortableHeader, refreshOnReturn};
})();
