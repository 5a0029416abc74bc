// Keyboard shortcuts: the command table and its rebindable key map live in shortcuts.js; this module keeps
// the mouse help and the entry point main.js calls.

import { installKeymap } from "./shortcuts.js";

export const MOUSE_HELP = [
  ["Drag the background", "Pan"],
  ["Space+drag / middle-drag", "Pan (anywhere, also over nodes)"],
  ["Wheel", "Zoom around the cursor"],
  ["Double-click the background, or type a letter", "Search nodes by name, category or socket type"],
  ["Click / Shift+click / Ctrl+click a node", "Select / add to or remove from the selection"],
  ["Ctrl+drag or Shift+drag the background", "Box select"],
  ["Drag a node's title or body", "Move it (and the other selected nodes)"],
  ["Drag from an output to an input", "Connect (only matching types; compatible sockets light up)"],
  ["Drag a link off an input", "Move it to another input, or drop it to remove it"],
  ["Drop a link on empty canvas", "Pick a compatible node to add and connect"],
  ["Number widget: arrows / drag / click", "Step / scrub / type a value"],
  ["Double-click a node or group title", "Rename"],
  ["Right-click", "Node, group or canvas menu (convert widgets, colours, groups…)"],
  ["Drop a .json or .png file", "Load its workflow"],
  ["Minimap: click or drag", "Move the view there"],
];

/** Listen for shortcuts on the window, except while typing in a field (bindings from editor.keymap). */
export function installShortcuts(editor) {
  installKeymap(editor);
}
