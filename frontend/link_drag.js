// Dragging links: from an output to an input (or backwards from an empty input), picking a link up off
// an input to move or drop it, and dropping on empty canvas to pick a compatible node from the palette.
// Only links the engine would accept are made; a refused one says why.

import { canConnect } from "./defs.js";
import { hitPart, inputPos, nodeAt, nodeLayout, outputPos } from "./layout.js";

export class LinkDrags {
  constructor(editor, interaction) {
    this.editor = editor;
    this.interaction = interaction;
  }

  fromOutput(node, slot) {
    const type = this.editor.graph.outputType(node, slot);
    if (type === undefined) return null;
    const start = outputPos(this.editor.graph, node, slot);
    return this.linkDragHandler({ fromOutput: true, nodeId: node.id, slot, type, start, end: start });
  }

  /** Pressing a linked input picks its link up (to move or drop it); an empty input drags backwards. */
  fromInput(node, name) {
    const graph = this.editor.graph;
    const existing = graph.linkInto(node.id, name);
    if (existing) {
      const source = graph.nodes.get(existing.from_node);
      graph.beginChange();
      graph.disconnect(node.id, name);
      graph.emit("move");
      const start = outputPos(graph, source, existing.from_slot);
      return this.linkDragHandler({
        fromOutput: true, nodeId: source.id, slot: existing.from_slot, type: graph.outputType(source, existing.from_slot),
        start, end: inputPos(graph, node, name), detached: true,
      });
    }
    const spec = graph.inputSpec(node, name);
    if (!spec) return null;
    const start = inputPos(graph, node, name);
    return this.linkDragHandler({ fromOutput: false, nodeId: node.id, input: name, spec, type: spec.type, start, end: start });
  }

  linkDragHandler(drag) {
    this.interaction.linkDrag = drag;
    return {
      move: () => {
        drag.end = this.interaction.pointerWorld();
        this.editor.canvas.setDirty();
      },
      up: () => {
        this.interaction.linkDrag = null;
        try {
          this.dropLink(drag, this.interaction.pointerWorld());
        } finally {
          if (drag.detached) this.editor.graph.endChange();
        }
      },
    };
  }

  dropLink(drag, [wx, wy]) {
    const graph = this.editor.graph;
    const editor = this.editor;
    const target = nodeAt(graph, wx, wy, 10);
    if (!target) {
      if (drag.detached) return; // dropping a picked-up link on the canvas removes it
      const screen = this.editor.canvas.toScreen(wx, wy);
      const rect = this.editor.canvas.el.getBoundingClientRect();
      editor.openPalette({
        at: [wx, wy], screen: [rect.left + screen[0], rect.top + screen[1]],
        filter: drag.fromOutput ? { accepts: drag.type } : { produces: drag.spec },
        onCreate: (node) => this.connectNew(drag, node),
      });
      return;
    }
    if (target.id === drag.nodeId) return;
    const hit = hitPart(graph, target, wx, wy);
    if (drag.fromOutput) {
      let input = null;
      if (hit.part === "input") input = hit.name;
      else if (hit.part === "widget" && hit.widget.spec && canConnect(drag.type, hit.widget.spec)) input = hit.widget.name;
      else input = this.compatibleInput(target, drag.type);
      if (!input) {
        editor.notify(`Cannot connect: ${editor.titleOf(target)} has no input that takes ${drag.type}`, "warn");
        return;
      }
      const reason = graph.change(() => graph.connect(drag.nodeId, drag.slot, target.id, input));
      if (reason) editor.notify(`Cannot connect ${drag.type} to ${input}: ${reason}`, "warn");
    } else {
      const slot = hit.part === "output" ? hit.index : this.compatibleOutput(target, drag.spec);
      if (slot === null || slot === undefined) {
        editor.notify(`Cannot connect: ${editor.titleOf(target)} has no output for ${drag.spec.type}`, "warn");
        return;
      }
      const reason = graph.change(() => graph.connect(target.id, slot, drag.nodeId, drag.input));
      if (reason) editor.notify(`Cannot connect to ${drag.input}: ${reason}`, "warn");
    }
  }

  /** The first input of `node` that accepts `type`: a free socket, then a linked one, then a widget. */
  compatibleInput(node, type) {
    const def = this.editor.graph.defs.get(node.type);
    if (!def) return null;
    const sockets = def.inputs.filter((spec) => (!spec.widget || node.converted.includes(spec.name)) && canConnect(type, spec));
    const free = sockets.find((spec) => !this.editor.graph.linkInto(node.id, spec.name));
    if (free || sockets.length) return (free || sockets[0]).name;
    const widget = def.inputs.find((spec) => spec.widget && spec.type !== "COMBO" && canConnect(type, spec));
    return widget ? widget.name : null;
  }

  compatibleOutput(node, spec) {
    const def = this.editor.graph.defs.get(node.type);
    if (!def || !spec) return null;
    const index = def.outputs.findIndex((out) => canConnect(out.type, spec));
    return index < 0 ? null : index;
  }

  /** After picking a node from the palette for a dropped link: connect it (same undo step). */
  connectNew(drag, node) {
    const graph = this.editor.graph;
    if (drag.fromOutput) {
      const input = this.compatibleInput(node, drag.type);
      if (input) graph.connect(drag.nodeId, drag.slot, node.id, input);
    } else {
      const slot = this.compatibleOutput(node, drag.spec);
      if (slot !== null) {
        const lay = nodeLayout(graph, node);
        node.pos = [node.pos[0] - lay.w, node.pos[1]];
        graph.connect(node.id, slot, drag.nodeId, drag.input);
      }
    }
  }
}
