// The side panel of the selected node: state, timings, attempts, error,
// neighbours, hashes and the verification of its provenance record.

import { ENDED_NODE_STATUSES, el, fieldList, formatDuration, formatTime, replaceChildren, statusBadge } from "./dom.js";

// Neighbours listed by name; the rest are counted.
const NEIGHBOURS_SHOWN = 12;

function hashField(value) {
  return value ? el("code", { class: "hash" }, value) : "—";
}

export class NodePanel {
  // `onSelect(id)` opens another node; `onClose()` clears the selection.
  constructor({ onSelect, onClose }) {
    this.onSelect = onSelect;
    this.element = el("aside", { class: "node-panel", id: "node-panel", hidden: true, "aria-live": "polite" });
    this.closeButton = el("button", { type: "button", class: "panel-close", "aria-label": "Close the node panel",
                                      onclick: () => onClose() }, "×");
    this.shownKey = null;
  }

  open(details) {
    this.shownKey = null;
    this.update(details);
    this.element.hidden = false;
  }

  close() {
    this.element.hidden = true;
    this.shownKey = null;
    delete this.element.dataset.nodeId;
  }

  // Render `details` unless they equal what the panel shows, so that a poll
  // that changed nothing keeps the panel's scroll position and text selection.
  update(details) {
    const key = JSON.stringify(details);
    if (key === this.shownKey) {
      return;
    }
    this.shownKey = key;
    const { node } = details;
    this.element.dataset.nodeId = node.node_id;
    this.element.dataset.status = node.status ?? "";
    replaceChildren(this.element,
      el("header", { class: "panel-header" }, el("h2", { class: "panel-title" }, node.node_id), this.closeButton),
      el("p", {}, statusBadge(node.status)),
      fieldList([
        ["Attempts", String(node.attempt_count ?? 0), "attempt_count"],
        ["Worker", node.worker ?? "—", "worker"],
        ["Queued", formatTime(node.queued_at), "queued_at"],
        ["Started", formatTime(node.started_at), "started_at"],
        ["Finished", formatTime(node.finished_at), "finished_at"],
        ["Duration", formatDuration(node.duration_seconds), "duration_seconds"],
      ]),
      node.error ? el("div", {}, el("h3", {}, "Error"), el("pre", { class: "error-text", "data-field": "error" }, node.error)) : null,
      this.provenanceSection(details, node.status),
      this.attemptsSection(node.attempts ?? []),
      this.neighbours("Depends on", details.parents),
      this.neighbours("Needed by", details.children));
  }

  provenanceSection({ provenance, provenanceState }, status) {
    const section = el("section", { class: "provenance", id: "node-provenance" }, el("h3", {}, "Provenance"));
    if (provenanceState === "loading") {
      section.append(el("p", { class: "muted" }, "Verifying the chain…"));
      return section;
    }
    if (provenanceState === "failed") {
      section.append(el("p", { class: "chain-invalid" }, "The provenance report could not be read; see the error above."));
      return section;
    }
    // The API reports a node without a record as invalid ("record missing"),
    // which is only a problem once the node has ended.
    if (provenance === null || (!provenance.chain_hash && !ENDED_NODE_STATUSES.has(status))) {
      section.append(el("p", { class: "muted", "data-field": "no_record" },
        "No provenance record yet: a node gets one when it ends."));
      return section;
    }

    const verdict = provenance.valid
      ? el("span", { class: "chain-valid" }, "✓ valid")
      : el("span", { class: "chain-invalid" }, "✗ invalid");
    section.append(fieldList([
      ["Verification", verdict, "valid"],
      ["Input hash", hashField(provenance.input_hash), "input_hash"],
      ["Output hash", hashField(provenance.output_hash), "output_hash"],
      ["Chain hash", hashField(provenance.chain_hash), "chain_hash"],
    ]));
    if (provenance.reasons.length > 0) {
      section.append(el("h4", {}, "Why it is invalid"),
        el("ul", { class: "reasons", "data-field": "reasons" }, provenance.reasons.map((reason) => el("li", {}, reason))));
    }
    if (provenance.notes.length > 0) {
      section.append(el("h4", {}, "Notes"),
        el("ul", { class: "notes", "data-field": "notes" }, provenance.notes.map((note) => el("li", {}, note))));
    }
    return section;
  }

  attemptsSection(attempts) {
    const section = el("section", { class: "attempts" }, el("h3", {}, `Attempts (${attempts.length})`));
    if (attempts.length === 0) {
      section.append(el("p", { class: "muted" }, "No attempt has started."));
      return section;
    }
    section.append(el("table", { class: "attempts-table", id: "node-attempts" },
      el("thead", {}, el("tr", {}, ["#", "Status", "Worker", "Started", "Duration"].map((name) => el("th", {}, name)))),
      el("tbody", {}, attempts.map((attempt) => [
        el("tr", { "data-attempt": attempt.attempt },
          el("td", {}, String(attempt.attempt)),
          el("td", {}, statusBadge(attempt.status)),
          el("td", { class: "worker" }, attempt.worker ?? "—"),
          el("td", {}, formatTime(attempt.started_at)),
          el("td", {}, formatDuration(attempt.duration_seconds))),
        attempt.error
          ? el("tr", { class: "attempt-error" }, el("td", { colspan: 5 }, el("pre", { class: "error-text" }, attempt.error)))
          : null,
      ]))));
    return section;
  }

  neighbours(title, ids) {
    if (ids.length === 0) {
      return null;
    }
    const shown = ids.slice(0, NEIGHBOURS_SHOWN);
    return el("section", { class: "neighbours" },
      el("h3", {}, `${title} (${ids.length})`),
      el("ul", {}, shown.map((id) => el("li", {},
        el("button", { type: "button", class: "link-button", onclick: () => this.onSelect(id) }, id)))),
      ids.length > shown.length ? el("p", { class: "muted" }, `and ${ids.length - shown.length} more`) : null);
  }
}
