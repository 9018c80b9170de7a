// The execution list: filters, pages by cursor, and refreshes itself.

import { getJson } from "./api.js";
import {
  EXECUTION_STATUSES, el, formatDuration, formatTime, replaceChildren, statusBadge,
} from "./dom.js";
import { clearError, reportError } from "./ui.js";

const REFRESH_SECONDS = 5;
const PAGE_SIZE = 50;
const SINCE_CHOICES = ["15m", "1h", "24h", "7d", "30d"];

export function listHash(filters) {
  const query = new URLSearchParams();
  for (const name of ["status", "dag_id", "since"]) {
    if (filters[name]) {
      query.set(name, filters[name]);
    }
  }
  const text = query.toString();
  return text ? `#/executions?${text}` : "#/executions";
}

export function executionHash(executionId, nodeId = null) {
  const base = `#/executions/${encodeURIComponent(executionId)}`;
  return nodeId === null ? base : `${base}?node=${encodeURIComponent(nodeId)}`;
}

function filterForm(filters) {
  const status = el("select", { name: "status", id: "filter-status" },
    el("option", { value: "" }, "any status"),
    EXECUTION_STATUSES.map((value) => el("option", { value, selected: filters.status === value }, value)));
  const dagId = el("input", { name: "dag_id", id: "filter-dag", value: filters.dag_id || "", placeholder: "any DAG",
                              autocomplete: "off", spellcheck: "false" });
  const since = el("input", { name: "since", id: "filter-since", value: filters.since || "", list: "since-choices",
                              placeholder: "any time", autocomplete: "off", spellcheck: "false" });
  const choices = el("datalist", { id: "since-choices" }, SINCE_CHOICES.map((value) => el("option", { value })));

  const form = el("form", { class: "filters", id: "filters" },
    el("label", {}, "Status ", status),
    el("label", {}, "DAG id ", dagId),
    el("label", { title: "Created within a duration (30m, 24h, 7d) or at or after an ISO 8601 time" },
      "Since ", since, choices),
    el("button", { type: "submit", class: "primary" }, "Apply"),
    el("a", { href: "#/executions", class: "button" }, "Reset"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    window.location.hash = listHash({ status: status.value, dag_id: dagId.value.trim(), since: since.value.trim() });
  });
  return form;
}

function progressCell(item) {
  const total = item.nodes_total ?? 0;
  const done = total - (item.nodes_remaining ?? 0);
  const bar = el("span", { class: "progress" }, el("span", { class: "progress-done" }));
  bar.firstChild.style.width = `${total > 0 ? (100 * done) / total : 0}%`;
  const running = (item.running_nodes || []).map((node) => node.node_id);
  return el("td", { class: "nodes", title: running.length ? `running: ${running.join(", ")}` : null },
    `${done}/${total} `, bar);
}

function chainCell(value) {
  if (value === true) {
    return el("td", { class: "chain chain-valid", "data-chain-valid": "true" }, "✓ valid");
  }
  if (value === false) {
    return el("td", { class: "chain chain-invalid", "data-chain-valid": "false" }, "✗ invalid");
  }
  return el("td", { class: "chain", "data-chain-valid": "null" }, "—");
}

function executionRow(item) {
  const classes = [`row-${item.status}`];
  if (item.chain_valid === false) {
    classes.push("row-broken");
  }
  const started = item.started_at
    ? el("td", {}, formatTime(item.started_at))
    : el("td", { class: "muted", title: "not started yet; the time the execution was created" },
      formatTime(item.created_at));
  return el("tr", { "data-execution-id": item.execution_id, "data-status": item.status, class: classes.join(" ") },
    el("td", {}, statusBadge(item.status)),
    el("td", { class: "dag" }, item.dag_id),
    el("td", { class: "execution-id" },
      el("a", { href: executionHash(item.execution_id) }, item.execution_id),
      item.error ? el("div", { class: "row-error", title: item.error }, item.error) : null),
    started,
    el("td", { class: "age" }, formatDuration(item.age_seconds)),
    progressCell(item),
    chainCell(item.chain_valid));
}

export class ListView {
  constructor(root, filters) {
    this.root = root;
    this.filters = filters;
    // Cursors of the pages before this one, so "Newer" can go back.
    this.previousCursors = [];
    this.cursor = null;
    this.timer = null;
    this.autoRefresh = true;
    this.stopped = false;

    this.tableBody = el("tbody");
    this.summary = el("span", { class: "muted", id: "list-summary" });
    this.newer = el("button", { type: "button", id: "page-newer", onclick: () => this.page(-1) }, "← Newer");
    this.older = el("button", { type: "button", id: "page-older", onclick: () => this.page(1) }, "Older →");
    const refresh = el("input", { type: "checkbox", id: "auto-refresh", checked: true });
    refresh.addEventListener("change", () => {
      this.autoRefresh = refresh.checked;
      this.schedule();
    });

    replaceChildren(root,
      el("h1", {}, "Executions"),
      filterForm(filters),
      el("div", { class: "list-tools" },
        el("label", {}, refresh, ` Refresh every ${REFRESH_SECONDS} s`),
        this.summary),
      el("table", { class: "executions", id: "executions" },
        el("thead", {}, el("tr", {},
          el("th", {}, "Status"), el("th", {}, "DAG"), el("th", {}, "Execution"), el("th", {}, "Started (UTC)"),
          el("th", { title: "Since the start, or since creation while not started" }, "Age"),
          el("th", { title: "Nodes that ended (completed, failed or skipped) of all nodes" }, "Nodes done"),
          el("th", { title: "Whether the provenance chain verified when the execution was finalized" }, "Chain"))),
        this.tableBody),
      el("div", { class: "pager" }, this.newer, this.older));
    this.load();
  }

  async load() {
    window.clearTimeout(this.timer);
    // A page change may start a load while another is in flight, so only the latest one is shown.
    this.loadNumber = (this.loadNumber ?? 0) + 1;
    const number = this.loadNumber;
    let page;
    try {
      page = await getJson("/executions", {
        query: { ...this.filters, limit: PAGE_SIZE, cursor: this.cursor },
      });
    } catch (error) {
      if (!this.stopped && number === this.loadNumber) {
        reportError(error, "listing executions failed");
        this.schedule();
      }
      return;
    }
    if (this.stopped || number !== this.loadNumber) {
      return;
    }
    clearError();
    this.nextCursor = page.next_cursor;
    replaceChildren(this.tableBody, page.items.map(executionRow));
    if (page.items.length === 0) {
      this.tableBody.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No executions match these filters.")));
    }
    this.newer.disabled = this.previousCursors.length === 0;
    this.older.disabled = !this.nextCursor;
    this.summary.textContent = `${page.items.length} shown, updated ${new Date().toLocaleTimeString()}`;
    this.schedule();
  }

  page(direction) {
    if (direction > 0 && this.nextCursor) {
      this.previousCursors.push(this.cursor);
      this.cursor = this.nextCursor;
    } else if (direction < 0 && this.previousCursors.length > 0) {
      this.cursor = this.previousCursors.pop();
    }
    this.load();
  }

  schedule() {
    window.clearTimeout(this.timer);
    if (this.autoRefresh && !this.stopped) {
      this.timer = window.setTimeout(() => this.load(), REFRESH_SECONDS * 1000);
    }
  }

  stop() {
    this.stopped = true;
    window.clearTimeout(this.timer);
  }
}
