// The execution page: header, actions, the DAG drawing with live node
// states, and the panel of the selected node.

import { download, executionPath, getJson, postJson } from "./api.js";
import {
  ENDED_NODE_STATUSES, FINISHED_EXECUTION_STATUSES, NODE_STATUSES, el, fieldList, formatDuration, formatTime, replaceChildren,
  shortHash, statusBadge,
} from "./dom.js";
import { GraphView, SVG_NODE_LIMIT } from "./graph.js";
import { executionHash, listHash } from "./list.js";
import { NodePanel } from "./node-panel.js";
import { clearError, confirmAction, reportError } from "./ui.js";

// Poll intervals while an execution is pending or running. A large DAG's
// execution document is a few hundred kilobytes, so it is read less often.
const POLL_MILLISECONDS = 1500;
const LARGE_DAG_POLL_MILLISECONDS = 2000;
const RESUMABLE = new Set(["failed", "cancelled", "completed"]);
const CANCELLABLE = new Set(["pending", "running"]);

// The DAG's nodes as [{id, parents}], in the execution's node order.
function dagNodes(definition, executionNodes) {
  const nodes = definition?.nodes ?? {};
  const ids = executionNodes.map((node) => node.node_id);
  for (const id of Object.keys(nodes)) {
    if (!ids.includes(id)) {
      ids.push(id);
    }
  }
  return ids.map((id) => ({ id, parents: nodes[id]?.depends_on ?? [] }));
}

function statusMap(execution) {
  return new Map(execution.nodes.map((node) => [node.node_id, node.status]));
}

export class ExecutionView {
  constructor(root, executionId, nodeId) {
    this.root = root;
    this.executionId = executionId;
    this.pendingNodeId = nodeId;
    this.execution = null;
    this.graph = null;
    this.timer = null;
    this.stopped = false;
    // The provenance report, kept until a node state changes, and the state of its request.
    this.provenance = null;
    this.provenanceKey = null;
    this.provenanceRequest = null;
    this.provenanceFailed = false;

    this.build();
    this.start();
  }

  build() {
    this.title = el("h1", {}, "Execution ", el("code", {}, this.executionId), " ");
    this.statusSlot = el("span", { id: "execution-status" });
    this.title.append(this.statusSlot);
    this.fields = el("div", { class: "execution-fields" });
    this.notice = el("p", { id: "notice", class: "notice", role: "status", hidden: true });
    this.verifyResult = el("section", { id: "verify-result", class: "verify-result", hidden: true });

    this.buttons = {
      resume: el("button", { type: "button", id: "action-resume", onclick: () => this.resume() }, "Resume…"),
      cancel: el("button", { type: "button", id: "action-cancel", class: "danger", onclick: () => this.cancel() },
        "Cancel…"),
      verify: el("button", { type: "button", id: "action-verify", onclick: () => this.verify() }, "Verify chain"),
      export: el("button", { type: "button", id: "action-export", onclick: () => this.exportBundle() },
        "Export audit bundle"),
    };
    for (const button of Object.values(this.buttons)) {
      button.disabled = true;
    }

    this.searchInput = el("input", { type: "search", id: "node-search", placeholder: "node id",
                                     autocomplete: "off", spellcheck: "false", "aria-label": "Find a node by id" });
    this.searchResult = el("span", { id: "node-search-result", class: "muted" });
    const searchForm = el("form", { class: "node-search", id: "node-search-form" },
      this.searchInput, el("button", { type: "submit" }, "Find"), this.searchResult);
    searchForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.findNext();
    });

    this.legend = el("ul", { class: "legend", id: "legend" },
      NODE_STATUSES.map((status) => el("li", { "data-status": status },
        el("span", { class: `swatch status-${status}` }), `${status} `,
        el("span", { class: "legend-count" }, "0"))));
    this.graphHost = el("div", { class: "graph", id: "graph" }, el("p", { class: "muted" }, "Loading the DAG…"));
    this.graphInfo = el("p", { class: "muted graph-info", id: "graph-info" });
    this.panel = new NodePanel({
      onSelect: (id) => this.selectNode(id, { center: true }),
      onClose: () => this.selectNode(null),
    });

    replaceChildren(this.root,
      el("p", {}, el("a", { href: listHash({}) }, "← Executions")),
      this.title,
      el("div", { class: "actions" }, Object.values(this.buttons)),
      this.notice,
      this.fields,
      this.verifyResult,
      el("section", { class: "graph-section" },
        el("div", { class: "graph-toolbar" },
          searchForm,
          el("div", { class: "zoom" },
            el("button", { type: "button", title: "Zoom out", "aria-label": "Zoom out",
                           onclick: () => this.graph?.zoomBy(1 / 1.4) }, "−"),
            el("button", { type: "button", title: "Zoom in", "aria-label": "Zoom in",
                           onclick: () => this.graph?.zoomBy(1.4) }, "+"),
            el("button", { type: "button", id: "graph-fit", onclick: () => this.graph?.fit() }, "Fit")),
          this.legend),
        el("div", { class: "graph-body" }, this.graphHost, this.panel.element),
        this.graphInfo));
  }

  async start() {
    let execution;
    let nodes;
    try {
      execution = await getJson(executionPath(this.executionId));
      nodes = dagNodes(await this.loadDefinition(execution), execution.nodes);
    } catch (error) {
      if (!this.stopped) {
        reportError(error, `loading execution ${this.executionId} failed`);
        replaceChildren(this.graphHost, el("p", { class: "muted" }, "The execution could not be loaded."));
      }
      return;
    }
    if (this.stopped) {
      return;
    }

    this.graph = new GraphView(this.graphHost, { onSelect: (id) => this.selectNode(id) });
    const elapsed = this.graph.setGraph(nodes, statusMap(execution));
    const renderer = nodes.length > SVG_NODE_LIMIT ? "canvas" : "SVG";
    this.graphInfo.textContent = `${nodes.length} nodes and ${this.graph.layout.edges.length} edges in `
      + `${this.graph.layout.layerCount} layers, drawn as ${renderer} in ${elapsed.toFixed(0)} ms. `
      + "Drag to pan, scroll to zoom, click a node for its details.";
    this.show(execution);
    if (this.pendingNodeId !== null) {
      this.selectNode(this.pendingNodeId, { center: true });
    }
    this.schedule();
  }

  // Return the DAG document that the execution ran. The registered DAG is that
  // document when its dag_hash matches. Otherwise the DAG was replaced or
  // deleted since, so the document comes from the execution's audit bundle.
  async loadDefinition(execution) {
    try {
      const dag = await getJson(`/dags/${encodeURIComponent(execution.dag_id)}`);
      if (dag.dag_hash === execution.dag_hash) {
        return dag.definition;
      }
    } catch (error) {
      if (error.status !== 404) {
        throw error;
      }
    }
    const bundle = await getJson(executionPath(this.executionId, "/audit-export"));
    return bundle.dag;
  }

  show(execution) {
    this.execution = execution;
    const statuses = statusMap(execution);
    const key = execution.nodes.map((node) => `${node.node_id}=${node.status}`).join("\n") + execution.status;
    if (key !== this.provenanceKey) {
      // A state changed, so the last verification may no longer hold.
      this.provenance = null;
      this.provenanceFailed = false;
      this.provenanceKey = key;
      if (!this.verifyResult.hidden) {
        this.verifyResult.hidden = true;
        this.graph?.setBroken([]);
      }
    }

    replaceChildren(this.statusSlot, statusBadge(execution.status));
    this.statusSlot.dataset.status = execution.status;
    this.buttons.resume.disabled = !RESUMABLE.has(execution.status);
    this.buttons.cancel.disabled = !CANCELLABLE.has(execution.status);
    this.buttons.verify.disabled = false;
    this.buttons.export.disabled = false;
    replaceChildren(this.fields, this.headerFields(execution));

    const counts = Object.fromEntries(NODE_STATUSES.map((status) => [status, 0]));
    for (const status of statuses.values()) {
      counts[status] = (counts[status] ?? 0) + 1;
    }
    for (const item of this.legend.children) {
      item.querySelector(".legend-count").textContent = String(counts[item.dataset.status] ?? 0);
    }

    this.graph?.updateStatuses(statuses);
    this.refreshPanel();
  }

  refreshPanel() {
    const selected = this.graph?.selected ?? null;
    if (selected !== null) {
      this.ensureProvenance();
      this.panel.update(this.nodeDetails(selected));
    }
  }

  headerFields(execution) {
    const done = execution.nodes_total - execution.nodes_remaining;
    const elapsed = execution.started_at
      ? ((execution.completed_at ? Date.parse(execution.completed_at) : Date.now()) - Date.parse(execution.started_at)) / 1000
      : null;
    let chain = "not finalized";
    if (execution.chain_valid === true) {
      chain = el("span", { class: "chain-valid" }, "✓ valid");
    } else if (execution.chain_valid === false) {
      chain = el("span", { class: "chain-invalid" }, "✗ invalid");
    }
    const pairs = [
      ["DAG", el("a", { href: listHash({ dag_id: execution.dag_id }) }, execution.dag_id), "dag_id"],
      ["DAG hash", el("code", { title: execution.dag_hash }, shortHash(execution.dag_hash)), "dag_hash"],
      ["Created", formatTime(execution.created_at), "created_at"],
      ["Started", formatTime(execution.started_at), "started_at"],
      ["Completed", formatTime(execution.completed_at), "completed_at"],
      [execution.completed_at ? "Duration" : "Running for", formatDuration(elapsed), "duration"],
      ["Nodes done", `${done} of ${execution.nodes_total}`, "nodes_done"],
      ["Chain at finalization", chain, "chain_valid"],
      ["Chain hash", el("code", { class: "hash" }, execution.provenance_chain_hash ?? "—"), "provenance_chain_hash"],
    ];
    if (execution.error) {
      pairs.push(["Error", el("pre", { class: "error-text" }, execution.error), "error"]);
    }
    if (execution.stop_reason) {
      pairs.push(["Stopped because", execution.stop_reason, "stop_reason"]);
    }
    if (execution.superseded_by) {
      pairs.push(["Superseded by",
        el("a", { href: executionHash(execution.superseded_by) }, execution.superseded_by), "superseded_by"]);
    }
    // POST /executions/<id>/replay stores the original's id in the replay's execution_options.
    const replayOf = execution.execution_options?.replay_of;
    if (typeof replayOf === "string") {
      pairs.push(["Replay of", el("a", { href: executionHash(replayOf) }, replayOf), "replay_of"]);
    }
    return fieldList(pairs, { id: "execution-fields" });
  }

  nodeDetails(nodeId) {
    const node = this.execution?.nodes.find((item) => item.node_id === nodeId) ?? { node_id: nodeId, attempts: [] };
    let provenanceState = "loaded";
    if (this.provenance === null) {
      provenanceState = this.provenanceFailed ? "failed" : "loading";
    }
    return {
      node,
      parents: this.graph.parentsOf(nodeId),
      children: this.graph.childrenOf(nodeId),
      provenance: this.provenance?.nodes.find((item) => item.node_id === nodeId) ?? null,
      provenanceState,
    };
  }

  // Select a node (null clears the selection), open its panel and record it in the address.
  selectNode(nodeId, { center = false } = {}) {
    if (this.graph === null) {
      this.pendingNodeId = nodeId;
      return;
    }
    if (nodeId !== null && !this.graph.has(nodeId)) {
      reportError({ code: "node_not_found", message: `the DAG of this execution has no node ${JSON.stringify(nodeId)}` });
      return;
    }
    history.replaceState(null, "", executionHash(this.executionId, nodeId));
    if (nodeId === null) {
      this.panel.close();
      this.graph.select(null);
      return;
    }
    this.ensureProvenance();
    // Open the panel first: it narrows the graph, and centring needs the final width.
    this.panel.open(this.nodeDetails(nodeId));
    this.graph.select(nodeId, { center });
  }

  // Start reading the provenance report, which the API verifies on each
  // request, unless one is loaded or on its way. The panel shows it on arrival.
  ensureProvenance() {
    if (this.provenance !== null || this.provenanceRequest !== null || this.provenanceFailed) {
      return;
    }
    this.provenanceRequest = this.fetchProvenance()
      .catch((error) => {
        this.provenanceFailed = true;
        reportError(error, "reading the provenance report failed");
      })
      .finally(() => {
        this.provenanceRequest = null;
        if (!this.stopped) {
          this.refreshPanel();
        }
      });
  }

  // Read the provenance report and keep it, unless a node state changed while it was on its way.
  async fetchProvenance() {
    const key = this.provenanceKey;
    const report = await getJson(executionPath(this.executionId, "/provenance"));
    if (key === this.provenanceKey) {
      this.provenance = report;
      this.provenanceFailed = false;
    }
    return report;
  }

  findNext() {
    if (this.graph === null) {
      return;
    }
    const query = this.searchInput.value;
    if (query !== this.lastQuery) {
      this.lastQuery = query;
      this.matches = this.graph.search(query);
      this.matchIndex = -1;
    }
    if (this.matches.length === 0) {
      this.searchResult.textContent = query.trim() ? `no node id contains “${query.trim()}”` : "";
      return;
    }
    this.matchIndex = (this.matchIndex + 1) % this.matches.length;
    this.searchResult.textContent = `${this.matchIndex + 1} of ${this.matches.length}`;
    this.selectNode(this.matches[this.matchIndex], { center: true });
  }

  // -- polling ------------------------------------------------------------

  schedule() {
    window.clearTimeout(this.timer);
    if (this.stopped || this.execution === null || FINISHED_EXECUTION_STATUSES.has(this.execution.status)) {
      return;
    }
    const large = (this.graph?.ids.length ?? 0) > SVG_NODE_LIMIT;
    this.timer = window.setTimeout(() => this.refresh(), large ? LARGE_DAG_POLL_MILLISECONDS : POLL_MILLISECONDS);
  }

  async refresh() {
    window.clearTimeout(this.timer);
    try {
      const execution = await getJson(executionPath(this.executionId));
      if (!this.stopped) {
        this.show(execution);
      }
    } catch (error) {
      if (!this.stopped) {
        reportError(error, "refreshing the execution failed; retrying");
      }
    }
    this.schedule();
  }

  // -- actions --------------------------------------------------------------

  say(message) {
    this.notice.textContent = message;
    this.notice.hidden = false;
  }

  async resume() {
    const choice = await confirmAction({
      title: "Resume this execution?",
      message: `Execution ${this.executionId} (${this.execution.status}) runs again from its verified checkpoints. `
        + "Nodes whose checkpoint or input changed run again, and so does everything downstream of them.",
      confirmLabel: "Resume",
      option: {
        label: "Re-run nodes whose checkpoint is corrupted",
        help: "Without this, resume stops with an error when a checkpoint no longer matches its hash. "
          + "With it, the corrupted records are archived and those nodes run again.",
      },
    });
    if (!choice.confirmed) {
      return;
    }
    await this.act("resuming the execution failed", async () => {
      const { body } = await postJson(executionPath(this.executionId, "/resume"), { rerun_corrupted: choice.checked });
      const reused = body.nodes_skipped?.length ?? 0;
      const again = body.nodes_remaining?.length ?? 0;
      this.say(again > 0
        ? `Resumed: ${again} node(s) run again, ${reused} reused from checkpoints.`
        : `Nothing to run: all ${reused} checkpoint(s) verified.`);
    });
  }

  async cancel() {
    const choice = await confirmAction({
      title: "Cancel this execution?",
      message: `Execution ${this.executionId} stops: queued nodes do not start, and running node tasks are revoked. `
        + "It can be resumed later.",
      confirmLabel: "Cancel execution",
    });
    if (!choice.confirmed) {
      return;
    }
    await this.act("cancelling the execution failed", async () => {
      const { body } = await postJson(executionPath(this.executionId, "/cancel"));
      this.say(`Cancelled (was ${body.previous_status}); ${body.revoked_tasks ?? 0} node task(s) revoked.`);
    });
  }

  async verify() {
    await this.act("verifying the chain failed", async () => {
      this.showVerification(await this.fetchProvenance());
    }, { refresh: false });
  }

  async exportBundle() {
    await this.act("exporting the audit bundle failed", async () => {
      const name = await download(executionPath(this.executionId, "/audit-export"), `audit-${this.executionId}.json`);
      this.say(`Audit bundle downloaded as ${name}.`);
    }, { refresh: false });
  }

  // Run an action with the buttons disabled, show its error if it fails, then read the execution again.
  async act(failure, action, { refresh = true } = {}) {
    clearError();
    const buttons = Object.values(this.buttons);
    const enabled = buttons.map((button) => !button.disabled);
    buttons.forEach((button) => { button.disabled = true; });
    try {
      await action();
    } catch (error) {
      reportError(error, failure);
    } finally {
      buttons.forEach((button, index) => { button.disabled = !enabled[index]; });
    }
    if (refresh && !this.stopped) {
      await this.refresh();
    }
  }

  showVerification(report) {
    // Nodes that have not ended have no record yet, and the API reports them
    // as invalid ("record missing"). They are counted, not listed as broken.
    const statusOf = new Map((this.execution?.nodes ?? []).map((node) => [node.node_id, node.status]));
    const notEnded = report.nodes.filter((node) => !node.valid && !node.chain_hash
      && statusOf.has(node.node_id) && !ENDED_NODE_STATUSES.has(statusOf.get(node.node_id)));
    const broken = report.nodes.filter((node) => !node.valid && !notEnded.includes(node));
    this.graph?.setBroken(broken.map((node) => node.node_id));
    const signature = report.signature
      ? `${report.signature.status}${report.signature.key_id ? ` (key ${report.signature.key_id})` : ""}`
      : "—";

    let verdict = el("strong", { class: "chain-invalid" }, "✗ chain invalid");
    if (report.chain_valid) {
      verdict = el("strong", { class: "chain-valid" }, "✓ chain valid");
    } else if (broken.length === 0 && notEnded.length > 0) {
      verdict = el("strong", { class: "chain-incomplete" }, "… chain incomplete: the execution has not finished");
    }
    replaceChildren(this.verifyResult,
      el("h2", {}, "Verification ", verdict),
      fieldList([
        ["Chain hash now", el("code", { class: "hash" }, report.provenance_chain_hash ?? "—"), "provenance_chain_hash"],
        ["Chain hash stored", el("code", { class: "hash" }, report.stored_provenance_chain_hash ?? "—"),
          "stored_provenance_chain_hash"],
        ["Signature", signature, "signature"],
        ["Records", String(report.chain_length), "chain_length"],
      ]),
      report.problems.length > 0
        ? el("ul", { class: "problems" }, report.problems.map((problem) => el("li", {}, problem)))
        : null,
      broken.length > 0
        ? el("div", { class: "broken-nodes" },
          el("h3", {}, `Broken nodes (${broken.length})`),
          el("ul", { id: "broken-nodes" }, broken.map((node) => el("li", { "data-node-id": node.node_id },
            el("button", { type: "button", class: "link-button", onclick: () => this.selectNode(node.node_id, { center: true }) },
              node.node_id),
            `: ${node.reasons.join("; ")}`))))
        : el("p", { class: "muted" }, "Every record verifies."),
      notEnded.length > 0
        ? el("p", { class: "muted", id: "nodes-not-ended" },
          `${notEnded.length} node(s) have not ended, so they have no record yet.`)
        : null);
    this.verifyResult.dataset.chainValid = String(report.chain_valid);
    this.verifyResult.hidden = false;
    this.refreshPanel();
  }

  stop() {
    this.stopped = true;
    window.clearTimeout(this.timer);
    this.graph?.destroy();
  }
}
