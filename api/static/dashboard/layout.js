// Layered layout of a DAG, computed in the browser from the DAG document.
//
// A node's layer is the length of the longest path from a root to it, so
// every edge points down. Inside a layer, nodes are ordered by the barycenter
// heuristic, which reduces edge crossings: each sweep sorts a layer by the
// mean position of each node's neighbours in the layers already placed.
// A layer wider than `maxColumns` wraps into several rows, column by column,
// so that the left-to-right order still follows the barycenters and a layer
// of 1,890 nodes stays on screen.

const SWEEPS = 4;

// Return each node's layer, or the layer after the last for nodes on a cycle
// (a stored DAG has none, but the drawing must not loop if one slips through).
function assignLayers(ids, parentsOf, childrenOf) {
  const layer = new Map();
  const pendingParents = new Map(ids.map((id) => [id, parentsOf.get(id).length]));
  const queue = ids.filter((id) => pendingParents.get(id) === 0);
  for (const id of queue) {
    layer.set(id, 0);
  }

  for (let head = 0; head < queue.length; head += 1) {
    const id = queue[head];
    for (const child of childrenOf.get(id)) {
      layer.set(child, Math.max(layer.get(child) ?? 0, layer.get(id) + 1));
      pendingParents.set(child, pendingParents.get(child) - 1);
      if (pendingParents.get(child) === 0) {
        queue.push(child);
      }
    }
  }

  if (queue.length < ids.length) {
    const last = Math.max(0, ...layer.values());
    for (const id of ids) {
      if (pendingParents.get(id) > 0) {
        layer.set(id, last + 1);
      }
    }
  }
  return layer;
}

// Sort each layer by the mean relative position (0 to 1) of its neighbours,
// alternating downward sweeps (parents) and upward sweeps (children).
function orderLayers(layers, parentsOf, childrenOf) {
  const position = new Map();
  const recordPositions = (members) => {
    members.forEach((id, index) => position.set(id, (index + 0.5) / members.length));
  };
  layers.forEach(recordPositions);

  const sortBy = (members, neighboursOf) => {
    const keys = new Map();
    for (const id of members) {
      const neighbours = neighboursOf.get(id);
      let sum = 0;
      for (const other of neighbours) {
        sum += position.get(other);
      }
      keys.set(id, neighbours.length > 0 ? sum / neighbours.length : position.get(id));
    }
    // Array.prototype.sort is stable, so ties keep their previous order.
    members.sort((a, b) => keys.get(a) - keys.get(b));
    recordPositions(members);
  };

  for (let sweep = 0; sweep < SWEEPS; sweep += 1) {
    for (let index = 1; index < layers.length; index += 1) {
      sortBy(layers[index], parentsOf);
    }
    for (let index = layers.length - 2; index >= 0; index -= 1) {
      sortBy(layers[index], childrenOf);
    }
  }
  // End on a downward sweep: readers follow a DAG from its roots.
  for (let index = 1; index < layers.length; index += 1) {
    sortBy(layers[index], parentsOf);
  }
}

// Lay out `nodes` ([{id, parents}], parents naming ids of `nodes`).
// Return {positions: Map id -> {x, y, layer}, edges: [[parent, child]], width,
// height, layerCount, parentsOf, childrenOf}, where x and y are the centre of
// the node's box in graph units and the box is geometry.nodeWidth by
// geometry.nodeHeight. Parents that are not in `nodes` are left out.
export function layeredLayout(nodes, geometry) {
  const ids = nodes.map((node) => node.id);
  const known = new Set(ids);
  const parentsOf = new Map();
  const childrenOf = new Map(ids.map((id) => [id, []]));
  const edges = [];
  for (const node of nodes) {
    const parents = node.parents.filter((parent) => known.has(parent));
    parentsOf.set(node.id, parents);
    for (const parent of parents) {
      childrenOf.get(parent).push(node.id);
      edges.push([parent, node.id]);
    }
  }

  const layerOf = assignLayers(ids, parentsOf, childrenOf);
  const layerCount = ids.length === 0 ? 0 : Math.max(...layerOf.values()) + 1;
  const layers = Array.from({ length: layerCount }, () => []);
  for (const id of ids) {
    layers[layerOf.get(id)].push(id);
  }
  orderLayers(layers, parentsOf, childrenOf);

  const { nodeWidth, nodeHeight, columnGap, rowGap, layerGap, maxColumns } = geometry;
  const slotWidth = nodeWidth + columnGap;
  const slotHeight = nodeHeight + rowGap;
  // The minimum number of rows of at most maxColumns, then the minimum number
  // of columns for those rows, so that a wrapped layer has no empty column.
  const rowsOf = (members) => Math.ceil(members.length / maxColumns);
  const columnsOf = (members) => Math.ceil(members.length / rowsOf(members));
  const width = Math.max(0, ...layers.map((members) => columnsOf(members) * slotWidth - columnGap));

  const positions = new Map();
  let top = 0;
  layers.forEach((members, layerIndex) => {
    const rows = rowsOf(members);
    const columns = columnsOf(members);
    const left = (width - (columns * slotWidth - columnGap)) / 2;
    members.forEach((id, index) => {
      const column = Math.floor(index / rows);
      const row = index % rows;
      positions.set(id, {
        x: left + column * slotWidth + nodeWidth / 2,
        y: top + row * slotHeight + nodeHeight / 2,
        layer: layerIndex,
      });
    });
    top += rows * slotHeight - rowGap + layerGap;
  });
  const height = Math.max(0, top - layerGap);

  return { positions, edges, width, height, layerCount, childrenOf, parentsOf };
}
