// Right-click menus for a node, a group and the empty canvas.

import { widgetSpecs } from "./defs.js";

export const NODE_COLOURS = {
  red: "#553333", brown: "#593930", green: "#335533", blue: "#333355", pale_blue: "#3f5159",
  cyan: "#335555", purple: "#553355", yellow: "#665533", black: "#111111",
};

export class ContextMenu {
  constructor(editor) {
    this.editor = editor;
  }

  open(x, y, { node, group, at }) {
    const items = node ? this.nodeItems(node) : group ? this.groupItems(group) : this.canvasItems(at, x, y);
    const title = node ? this.editor.titleOf(node) : group ? group.title : null;
    this.editor.menu.open(x, y, items, { title, className: "context-menu" });
  }

  colourItems(current, apply) {
    return [{ label: "default", checked: !current, action: () => apply(null) }].concat(
      Object.entries(NODE_COLOURS).map(([name, colour]) => ({ label: name, checked: current === colour, action: () => apply(colour) })),
    );
  }

  nodeItems(node) {
    const { graph, actions } = this.editor;
    const def = graph.defs.get(node.type);
    const widgets = widgetSpecs(def);
    const unconverted = widgets.filter((spec) => !node.converted.includes(spec.name));
    const converted = widgets.filter((spec) => node.converted.includes(spec.name));
    const convert = (name, asInput) => graph.change(() => graph.convertWidget(node, name, asInput));
    return [
      { label: "Rename (F2)", action: () => this.editor.interaction.renameNode(node) },
      { label: node.collapsed ? "Expand (Alt+C)" : "Collapse (Alt+C)", action: () => actions.toggleCollapse() },
      { label: "Mute (Ctrl+M)", checked: node.mode === "never", action: () => actions.toggleMode("never") },
      { label: "Bypass (Ctrl+B)", checked: node.mode === "bypass", action: () => actions.toggleMode("bypass") },
      { separator: true },
      {
        label: "Convert widget to input", disabled: !unconverted.length,
        submenu: unconverted.map((spec) => ({ label: `Convert ${spec.name} to input`, action: () => convert(spec.name, true) })),
      },
      {
        label: "Convert input to widget", disabled: !converted.length,
        submenu: converted.map((spec) => ({ label: `Convert ${spec.name} to widget`, action: () => convert(spec.name, false) })),
      },
      {
        label: "Colour",
        submenu: this.colourItems(node.color, (colour) => graph.change(() => {
          for (const id of this.editor.selection) {
            const chosen = graph.nodes.get(id);
            if (chosen) chosen.color = colour;
          }
        })),
      },
      { label: "Reset size", disabled: !node.size, action: () => graph.change(() => { node.size = null; graph.touch(node); }) },
      ...(this.editor.nodeMenuItems ? this.editor.nodeMenuItems(node) : []),
      { separator: true },
      { label: "Copy (Ctrl+C)", action: () => actions.copy() },
      { label: "Clone", action: () => actions.clone() },
      { label: "Group selected nodes (Ctrl+G)", action: () => actions.groupSelected() },
      { label: "Remove (Del)", action: () => actions.deleteSelected() },
    ];
  }

  groupItems(group) {
    const { graph } = this.editor;
    return [
      { label: "Edit title", action: () => this.editor.interaction.renameGroup(group) },
      { label: "Colour", submenu: this.colourItems(group.color, (colour) => graph.change(() => (group.color = colour))) },
      { label: "Fit group to its nodes", action: () => this.editor.actions.fitGroup(group) },
      { label: "Remove group", action: () => graph.change(() => graph.groups.splice(graph.groups.indexOf(group), 1)) },
    ];
  }

  canvasItems(at, x, y) {
    const { actions } = this.editor;
    return [
      { label: "Add node… (double-click, Tab)", action: () => this.editor.openPalette({ at, screen: [x, y] }) },
      { label: "Add group here", action: () => actions.addGroup(at) },
      { label: "Group selected nodes (Ctrl+G)", disabled: !this.editor.selection.size, action: () => actions.groupSelected() },
      { label: "Paste (Ctrl+V)", action: () => actions.paste(at) },
      { separator: true },
      { label: "Fit view (.)", action: () => actions.fitView() },
      { label: "Arrange nodes in columns", action: () => actions.arrange() },
      { label: "Select all (Ctrl+A)", action: () => actions.selectAll() },
    ];
  }
}
