// DOM building and value formatting shared by the views.
//
// Every value from the API reaches the page as a text node or an attribute
// value, never as markup: node ids, error messages and DAG ids are set by
// users, so they must not be parsed as HTML.

export const EXECUTION_STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
export const FINISHED_EXECUTION_STATUSES = new Set(["completed", "failed", "cancelled"]);
export const NODE_STATUSES = ["waiting", "ready", "queued", "running", "retrying", "completed", "failed", "skipped"];
// A node gets its provenance record when it reaches one of these states.
export const ENDED_NODE_STATUSES = new Set(["completed", "failed", "skipped"]);

// Build an element. `attributes` go through setAttribute (or addEventListener
// for on* functions); `children` are nodes, or strings that become text nodes.
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) {
      continue;
    }
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, ...children);
  return element;
}

export function append(parent, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) {
      continue;
    }
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

export function replaceChildren(parent, ...children) {
  parent.replaceChildren();
  return append(parent, ...children);
}

export function statusBadge(status) {
  return el("span", { class: `badge status-${status}`, "data-status": status }, status ?? "unknown");
}

// "2026-01-31T08:02:11.538204Z" as "2026-01-31 08:02:11" (UTC); null as an em dash.
export function formatTime(iso) {
  if (!iso) {
    return "—";
  }
  return iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "");
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) {
    return "—";
  }
  if (seconds < 1) {
    return `${Math.round(seconds * 1000)} ms`;
  }
  if (seconds < 60) {
    return `${seconds.toFixed(1)} s`;
  }
  const total = Math.floor(seconds);
  const days = Math.floor(total / 86400);
  const hours = Math.floor((total % 86400) / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const rest = total % 60;
  if (days > 0) {
    return `${days}d ${hours}h`;
  }
  if (hours > 0) {
    return `${hours}h ${String(minutes).padStart(2, "0")}m`;
  }
  return `${minutes}m ${String(rest).padStart(2, "0")}s`;
}

export function shortHash(hash) {
  return hash ? `${hash.slice(0, 12)}…` : "—";
}

// A definition list from [label, value] pairs; a value may be a node or text.
export function fieldList(pairs, attributes = {}) {
  const list = el("dl", { class: "fields", ...attributes });
  for (const [label, value, field] of pairs) {
    list.append(el("dt", {}, label), el("dd", { "data-field": field }, value ?? "—"));
  }
  return list;
}
