// The DAG drawing of the execution page: layout, pan and zoom, node search,
// and node colours that follow the nodes' states.
//
// Up to SVG_NODE_LIMIT nodes are drawn as SVG, with a label on every node.
// Larger DAGs are drawn on two stacked canvases: edges on one, nodes on the
// other. A state change repaints only the nodes that changed, so polling
// never redraws the edges or recomputes the layout.

import { layeredLayout } from "./layout.js";
import { NODE_STATUSES, el } from "./dom.js";

// Above this many nodes, one SVG element per node and edge makes panning
// slow in Chromium, and labels are unreadable at the zoom that fits the DAG.
// The number is a judgment call, not a measured limit.
export const SVG_NODE_LIMIT = 300;

const SVG_GEOMETRY = { nodeWidth: 150, nodeHeight: 30, columnGap: 18, rowGap: 14, layerGap: 56 };
const CANVAS_GEOMETRY = { nodeWidth: 28, nodeHeight: 14, columnGap: 8, rowGap: 8, layerGap: 48 };
const SVG_NS = "http://www.w3.org/2000/svg";
// Characters of a node id that fit in an SVG node box at 12 px.
const SVG_LABEL_CHARACTERS = 19;
// Canvas nodes get labels once a box is this many screen pixels wide.
const CANVAS_LABEL_MIN_WIDTH = 70;
// A pointer that moves less than this many pixels between press and release clicks.
const CLICK_TOLERANCE_PIXELS = 4;
// Above this many changed nodes, a canvas repaints all nodes at once.
const PARTIAL_REPAINT_LIMIT = 200;
// Canvas edges get fainter as they get more numerous, so that thousands of
// edges into one node read as a shade instead of a solid block.
const EDGE_ALPHA_BUDGET = 2000;
const MIN_EDGE_ALPHA = 0.2;

// Columns of the widest row: about 1.2 (SVG) or 1.6 (canvas) times the
// square root of the node count, which keeps the drawing wider than tall.
function maxColumnsFor(count, onCanvas) {
  return Math.max(6, Math.ceil(Math.sqrt(count) * (onCanvas ? 1.6 : 1.2)));
}

function svgElement(tag, attributes = {}) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    element.setAttribute(name, String(value));
  }
  return element;
}

function edgeCurve(from, to, halfHeight) {
  const startY = from.y + halfHeight;
  const endY = to.y - halfHeight;
  const bend = Math.max(8, Math.min(40, (endY - startY) / 2));
  return [from.x, startY, from.x, startY + bend, to.x, endY - bend, to.x, endY];
}

function truncate(text, characters) {
  return text.length > characters ? `${text.slice(0, Math.max(1, characters - 1))}…` : text;
}

class SvgRenderer {
  constructor(graph) {
    this.graph = graph;
    const { positions, edges } = graph.layout;
    const { nodeWidth, nodeHeight } = graph.geometry;

    this.svg = svgElement("svg", { class: "graph-svg", width: "100%", height: "100%" });
    this.root = svgElement("g", { class: "viewport" });
    const edgeGroup = svgElement("g", { class: "edges" });
    const nodeGroup = svgElement("g", { class: "nodes" });
    this.root.append(edgeGroup, nodeGroup);
    this.svg.append(this.root);

    this.edgesByNode = new Map(graph.ids.map((id) => [id, []]));
    for (const [parent, child] of edges) {
      const [x0, y0, x1, y1, x2, y2, x3, y3] = edgeCurve(positions.get(parent), positions.get(child), nodeHeight / 2);
      const path = svgElement("path", { class: "edge", d: `M${x0} ${y0}C${x1} ${y1} ${x2} ${y2} ${x3} ${y3}` });
      edgeGroup.append(path);
      this.edgesByNode.get(parent).push(path);
      this.edgesByNode.get(child).push(path);
    }

    this.nodeElements = new Map();
    for (const id of graph.ids) {
      const { x, y } = positions.get(id);
      const group = svgElement("g", { transform: `translate(${x - nodeWidth / 2} ${y - nodeHeight / 2})` });
      group.setAttribute("data-node-id", id);
      const box = svgElement("rect", { width: nodeWidth, height: nodeHeight, rx: 5 });
      const label = svgElement("text", { x: 9, y: nodeHeight / 2 + 4 });
      label.textContent = truncate(id, SVG_LABEL_CHARACTERS);
      group.append(box, label);
      nodeGroup.append(group);
      this.nodeElements.set(id, group);
    }
    this.refreshNodes(graph.ids);
    graph.surface.append(this.svg);
  }

  draw() {
    const { scale, x, y } = this.graph.view;
    this.root.setAttribute("transform", `translate(${x} ${y}) scale(${scale})`);
  }

  refreshNodes(ids) {
    for (const id of ids) {
      const group = this.nodeElements.get(id);
      group.setAttribute("class", this.graph.nodeClass(id));
      group.setAttribute("data-status", this.graph.statusOf(id));
    }
  }

  refreshSelection(previous, current) {
    for (const path of this.edgesByNode.get(previous) ?? []) {
      path.classList.remove("related");
    }
    for (const path of this.edgesByNode.get(current) ?? []) {
      path.classList.add("related");
    }
    this.refreshNodes([previous, current].filter((id) => id !== null));
  }

  resize() {}

  destroy() {
    this.svg.remove();
  }
}

class CanvasRenderer {
  constructor(graph) {
    this.graph = graph;
    const { positions, edges } = graph.layout;
    const { nodeHeight } = graph.geometry;

    this.edgeCanvas = el("canvas", { class: "graph-layer" });
    this.nodeCanvas = el("canvas", { class: "graph-layer" });
    this.nodeCanvas.setAttribute("aria-label", `DAG of ${graph.ids.length} nodes`);
    graph.surface.append(this.edgeCanvas, this.nodeCanvas);

    this.xs = new Float64Array(graph.ids.length);
    this.ys = new Float64Array(graph.ids.length);
    this.indexOf = new Map();
    graph.ids.forEach((id, index) => {
      const { x, y } = positions.get(id);
      this.xs[index] = x;
      this.ys[index] = y;
      this.indexOf.set(id, index);
    });

    // Edges never change, so they are one path built once.
    this.edgePath = new Path2D();
    this.edgesByNode = new Map(graph.ids.map((id) => [id, []]));
    for (const [parent, child] of edges) {
      const [x0, y0, x1, y1, x2, y2, x3, y3] = edgeCurve(positions.get(parent), positions.get(child), nodeHeight / 2);
      this.edgePath.moveTo(x0, y0);
      this.edgePath.bezierCurveTo(x1, y1, x2, y2, x3, y3);
      const curve = [x0, y0, x1, y1, x2, y2, x3, y3];
      this.edgesByNode.get(parent).push(curve);
      this.edgesByNode.get(child).push(curve);
    }

    this.colors = this.readColors();
    this.edgeAlpha = Math.max(MIN_EDGE_ALPHA, Math.min(1, EDGE_ALPHA_BUDGET / Math.max(1, edges.length)));
    this.resize();
  }

  // The state colours come from the stylesheet, so the SVG and canvas drawings and the legend agree.
  readColors() {
    const style = getComputedStyle(this.graph.host);
    const read = (name) => style.getPropertyValue(name).trim();
    const colors = { edge: read("--graph-edge"), related: read("--graph-edge-related"),
                     selected: read("--graph-selected"), match: read("--graph-match"),
                     broken: read("--graph-broken"), fill: {}, text: {} };
    for (const status of NODE_STATUSES) {
      colors.fill[status] = read(`--state-${status}`);
      colors.text[status] = read(`--state-${status}-text`);
    }
    return colors;
  }

  resize() {
    const { width, height } = this.graph.surface.getBoundingClientRect();
    this.ratio = window.devicePixelRatio || 1;
    for (const canvas of [this.edgeCanvas, this.nodeCanvas]) {
      canvas.width = Math.max(1, Math.round(width * this.ratio));
      canvas.height = Math.max(1, Math.round(height * this.ratio));
    }
    this.width = width;
    this.height = height;
  }

  draw() {
    this.drawEdges();
    this.drawNodes();
  }

  drawEdges() {
    const context = this.edgeCanvas.getContext("2d");
    const { scale, x, y } = this.graph.view;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.clearRect(0, 0, this.edgeCanvas.width, this.edgeCanvas.height);
    context.setTransform(this.ratio * scale, 0, 0, this.ratio * scale, this.ratio * x, this.ratio * y);
    context.lineWidth = 1 / scale;
    context.strokeStyle = this.colors.edge;
    context.globalAlpha = this.edgeAlpha;
    context.stroke(this.edgePath);
    context.globalAlpha = 1;

    const selected = this.graph.selected;
    if (selected !== null) {
      context.lineWidth = 2 / scale;
      context.strokeStyle = this.colors.related;
      context.beginPath();
      for (const [x0, y0, x1, y1, x2, y2, x3, y3] of this.edgesByNode.get(selected) ?? []) {
        context.moveTo(x0, y0);
        context.bezierCurveTo(x1, y1, x2, y2, x3, y3);
      }
      context.stroke();
    }
  }

  // The node's box in CSS pixels of the canvas.
  screenBox(index) {
    const { scale, x, y } = this.graph.view;
    const { nodeWidth, nodeHeight } = this.graph.geometry;
    const width = Math.max(2, nodeWidth * scale);
    const height = Math.max(2, nodeHeight * scale);
    return {
      left: this.xs[index] * scale + x - width / 2,
      top: this.ys[index] * scale + y - height / 2,
      width,
      height,
    };
  }

  drawNodes() {
    const context = this.nodeCanvas.getContext("2d");
    context.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    context.clearRect(0, 0, this.width, this.height);
    for (let index = 0; index < this.xs.length; index += 1) {
      this.paintNode(context, index);
    }
  }

  paintNode(context, index) {
    const box = this.screenBox(index);
    if (box.left > this.width || box.top > this.height || box.left + box.width < 0 || box.top + box.height < 0) {
      return;
    }
    const id = this.graph.ids[index];
    const status = this.graph.statusOf(id);
    context.fillStyle = this.colors.fill[status] || this.colors.fill.waiting;
    context.fillRect(box.left, box.top, box.width, box.height);

    const outline = this.outlineOf(id, status);
    if (outline !== null) {
      context.lineWidth = 2;
      context.strokeStyle = outline;
      context.strokeRect(box.left - 1, box.top - 1, box.width + 2, box.height + 2);
    }

    if (box.width >= CANVAS_LABEL_MIN_WIDTH) {
      const fontSize = Math.min(12, box.height * 0.6);
      context.font = `${fontSize}px system-ui, sans-serif`;
      context.fillStyle = this.colors.text[status] || "#000";
      context.textBaseline = "middle";
      const characters = Math.floor((box.width - 8) / (fontSize * 0.6));
      context.fillText(truncate(id, characters), box.left + 4, box.top + box.height / 2, box.width - 8);
    }
  }

  outlineOf(id, status) {
    const graph = this.graph;
    if (graph.selected === id) {
      return this.colors.selected;
    }
    if (graph.broken.has(id) || status === "failed") {
      return this.colors.broken;
    }
    if (graph.matches.has(id)) {
      return this.colors.match;
    }
    return null;
  }

  // Repaint the given nodes only: clear each one's box and its outline margin,
  // then repaint every node that reaches into that area.
  refreshNodes(ids) {
    if (ids.length > PARTIAL_REPAINT_LIMIT) {
      this.drawNodes();
      return;
    }
    const context = this.nodeCanvas.getContext("2d");
    context.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    const margin = 3;
    for (const id of ids) {
      const area = this.screenBox(this.indexOf.get(id));
      const left = area.left - margin;
      const top = area.top - margin;
      const right = area.left + area.width + margin;
      const bottom = area.top + area.height + margin;
      context.save();
      context.beginPath();
      context.rect(left, top, right - left, bottom - top);
      context.clip();
      context.clearRect(left, top, right - left, bottom - top);
      for (let index = 0; index < this.xs.length; index += 1) {
        const box = this.screenBox(index);
        if (box.left - margin < right && box.left + box.width + margin > left
            && box.top - margin < bottom && box.top + box.height + margin > top) {
          this.paintNode(context, index);
        }
      }
      context.restore();
    }
  }

  refreshSelection(previous, current) {
    this.drawEdges();
    this.refreshNodes([previous, current].filter((id) => id !== null));
  }

  destroy() {
    this.edgeCanvas.remove();
    this.nodeCanvas.remove();
  }
}

export class GraphView {
  // `host` is an element with a fixed size; `onSelect(id)` runs when the user clicks a node.
  constructor(host, { onSelect }) {
    this.host = host;
    this.onSelect = onSelect;
    this.view = { scale: 1, x: 0, y: 0 };
    this.statuses = new Map();
    this.selected = null;
    this.matches = new Set();
    this.broken = new Set();
    this.renderer = null;
    this.drawPending = false;

    this.surface = el("div", { class: "graph-surface" });
    this.tooltip = el("div", { class: "graph-tooltip", hidden: true });
    host.replaceChildren(this.surface, this.tooltip);
    this.listen();
    // The surface width that the view was last computed for. When the node
    // panel opens or closes, the view moves by half the change, so that what
    // was in the middle stays there.
    this.viewWidth = null;
    this.resizeObserver = new ResizeObserver(() => {
      if (this.renderer === null) {
        return;
      }
      const { width } = this.surface.getBoundingClientRect();
      if (this.viewWidth !== null) {
        this.view.x += (width - this.viewWidth) / 2;
      }
      this.viewWidth = width;
      this.renderer.resize();
      this.drawNow();
    });
    this.resizeObserver.observe(this.surface);
  }

  // Lay out and draw `nodes` ([{id, parents}]) with their states (Map id -> status).
  // Return the milliseconds taken by the layout and the first drawing.
  setGraph(nodes, statuses) {
    const started = performance.now();
    const onCanvas = nodes.length > SVG_NODE_LIMIT;
    this.geometry = { ...(onCanvas ? CANVAS_GEOMETRY : SVG_GEOMETRY), maxColumns: maxColumnsFor(nodes.length, onCanvas) };
    this.ids = nodes.map((node) => node.id);
    this.layout = layeredLayout(nodes, this.geometry);
    this.statuses = new Map(statuses);
    this.renderer?.destroy();
    this.renderer = onCanvas ? new CanvasRenderer(this) : new SvgRenderer(this);
    this.fit();
    const elapsed = performance.now() - started;

    this.host.dataset.renderer = onCanvas ? "canvas" : "svg";
    this.host.dataset.nodeCount = String(this.ids.length);
    this.host.dataset.edgeCount = String(this.layout.edges.length);
    this.host.dataset.renderMs = elapsed.toFixed(1);
    return elapsed;
  }

  statusOf(id) {
    return this.statuses.get(id) ?? "waiting";
  }

  nodeClass(id) {
    let names = `node status-${this.statusOf(id)}`;
    if (this.selected === id) {
      names += " selected";
    }
    if (this.matches.has(id)) {
      names += " match";
    }
    if (this.broken.has(id)) {
      names += " broken";
    }
    return names;
  }

  parentsOf(id) {
    return this.layout.parentsOf.get(id) ?? [];
  }

  childrenOf(id) {
    return this.layout.childrenOf.get(id) ?? [];
  }

  has(id) {
    return this.layout?.positions.has(id) ?? false;
  }

  // Apply new states and repaint only the nodes whose state changed.
  updateStatuses(statuses) {
    const changed = [];
    for (const [id, status] of statuses) {
      if (this.statuses.get(id) !== status && this.has(id)) {
        this.statuses.set(id, status);
        changed.push(id);
      }
    }
    if (changed.length > 0) {
      this.renderer.refreshNodes(changed);
    }
    return changed;
  }

  select(id, { center = false } = {}) {
    const previous = this.selected;
    this.selected = id !== null && this.has(id) ? id : null;
    this.renderer.refreshSelection(previous, this.selected);
    if (center && this.selected !== null) {
      this.centerOn(this.selected);
    }
  }

  setBroken(ids) {
    const touched = new Set([...this.broken, ...ids]);
    this.broken = new Set(ids.filter((id) => this.has(id)));
    this.renderer.refreshNodes([...touched].filter((id) => this.has(id)));
  }

  // Mark the nodes whose id contains `text` (case-insensitive), an exact
  // match first. Return the matching ids.
  search(text) {
    const query = text.trim().toLowerCase();
    const previous = [...this.matches];
    let found = [];
    if (query !== "") {
      found = this.ids.filter((id) => id.toLowerCase().includes(query));
      found.sort((a, b) => Number(b.toLowerCase() === query) - Number(a.toLowerCase() === query));
    }
    this.matches = new Set(found);
    this.renderer.refreshNodes([...new Set([...previous, ...found])]);
    return found;
  }

  fit() {
    const { width, height } = this.surface.getBoundingClientRect();
    const margin = 24;
    const scaleX = (width - 2 * margin) / Math.max(1, this.layout.width);
    const scaleY = (height - 2 * margin) / Math.max(1, this.layout.height);
    // SVG labels stay at their natural size at most; small canvas boxes may grow.
    const maxScale = this.renderer instanceof SvgRenderer ? 1 : 4;
    const scale = Math.max(0.02, Math.min(maxScale, scaleX, scaleY));
    this.view = {
      scale,
      x: (width - this.layout.width * scale) / 2,
      y: Math.max(margin, (height - this.layout.height * scale) / 2),
    };
    this.viewWidth = width;
    this.drawNow();
  }

  zoomBy(factor, atX = null, atY = null) {
    const { width, height } = this.surface.getBoundingClientRect();
    const pointX = atX ?? width / 2;
    const pointY = atY ?? height / 2;
    const { scale, x, y } = this.view;
    const next = Math.max(0.02, Math.min(8, scale * factor));
    // Keep the graph point under the pointer where it is.
    this.view = {
      scale: next,
      x: pointX - ((pointX - x) / scale) * next,
      y: pointY - ((pointY - y) / scale) * next,
    };
    this.requestDraw();
  }

  // Move the view so that the node is in the middle, zoomed in far enough to read its label.
  centerOn(id) {
    const { width, height } = this.surface.getBoundingClientRect();
    const position = this.layout.positions.get(id);
    const readable = this.renderer instanceof SvgRenderer ? 0.8 : 110 / this.geometry.nodeWidth;
    const scale = Math.max(this.view.scale, readable);
    this.view = { scale, x: width / 2 - position.x * scale, y: height / 2 - position.y * scale };
    this.viewWidth = width;
    this.drawNow();
  }

  nodeAt(screenX, screenY) {
    const { scale, x, y } = this.view;
    const graphX = (screenX - x) / scale;
    const graphY = (screenY - y) / scale;
    const halfWidth = this.geometry.nodeWidth / 2;
    const halfHeight = this.geometry.nodeHeight / 2;
    for (const [id, position] of this.layout.positions) {
      if (Math.abs(graphX - position.x) <= halfWidth && Math.abs(graphY - position.y) <= halfHeight) {
        return id;
      }
    }
    return null;
  }

  drawNow() {
    this.renderer?.draw();
  }

  requestDraw() {
    if (this.drawPending) {
      return;
    }
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      this.drawNow();
    });
  }

  listen() {
    const surface = this.surface;
    let drag = null;
    const local = (event) => {
      const bounds = surface.getBoundingClientRect();
      return [event.clientX - bounds.left, event.clientY - bounds.top];
    };

    surface.addEventListener("pointerdown", (event) => {
      if (event.button !== 0 || this.renderer === null) {
        return;
      }
      drag = { startX: event.clientX, startY: event.clientY, viewX: this.view.x, viewY: this.view.y, moved: false };
      surface.setPointerCapture(event.pointerId);
    });
    surface.addEventListener("pointermove", (event) => {
      if (this.renderer === null) {
        return;
      }
      if (drag !== null) {
        const dx = event.clientX - drag.startX;
        const dy = event.clientY - drag.startY;
        drag.moved ||= Math.hypot(dx, dy) >= CLICK_TOLERANCE_PIXELS;
        if (drag.moved) {
          this.view.x = drag.viewX + dx;
          this.view.y = drag.viewY + dy;
          this.tooltip.hidden = true;
          this.requestDraw();
        }
        return;
      }
      this.showTooltip(...local(event));
    });
    surface.addEventListener("pointerup", (event) => {
      if (drag === null) {
        return;
      }
      const clicked = !drag.moved;
      drag = null;
      if (clicked) {
        const id = this.nodeAt(...local(event));
        if (id !== null) {
          this.select(id);
          this.onSelect(id);
        }
      }
    });
    surface.addEventListener("pointercancel", () => {
      drag = null;
    });
    surface.addEventListener("pointerleave", () => {
      this.tooltip.hidden = true;
    });
    surface.addEventListener("wheel", (event) => {
      if (this.renderer === null) {
        return;
      }
      event.preventDefault();
      this.zoomBy(Math.exp(-event.deltaY * 0.0015), ...local(event));
    }, { passive: false });
  }

  showTooltip(x, y) {
    const id = this.nodeAt(x, y);
    if (id === null) {
      this.tooltip.hidden = true;
      return;
    }
    this.tooltip.textContent = `${id} — ${this.statusOf(id)}`;
    this.tooltip.style.left = `${x + 14}px`;
    this.tooltip.style.top = `${y + 14}px`;
    this.tooltip.hidden = false;
  }

  destroy() {
    this.resizeObserver.disconnect();
    this.renderer?.destroy();
    this.renderer = null;
  }
}
