// Keyboard shortcuts. The same table feeds the help overlay, so what is listed is what works.

/** [keys shown in help, description, matcher(event), action(editor, event)] */
export const SHORTCUTS = [
  ["Ctrl+Enter", "Queue the workflow (batch count from the toolbar)", (e) => e.key === "Enter" && ctrl(e), (ed) => ed.actions.queue()],
  ["Ctrl+Z", "Undo", (e) => ctrl(e) && !e.shiftKey && key(e, "z"), (ed) => ed.actions.undo()],
  ["Ctrl+Y / Ctrl+Shift+Z", "Redo", (e) => ctrl(e) && (key(e, "y") || (e.shiftKey && key(e, "z"))), (ed) => ed.actions.redo()],
  ["Ctrl+C", "Copy the selected nodes", (e) => ctrl(e) && key(e, "c"), (ed) => ed.actions.copy()],
  ["Ctrl+V", "Paste at the mouse", (e) => ctrl(e) && !e.shiftKey && key(e, "v"), (ed) => ed.actions.paste()],
  ["Ctrl+Shift+V", "Paste, keeping links into the pasted nodes", (e) => ctrl(e) && e.shiftKey && key(e, "v"), (ed) => ed.actions.paste(null, true)],
  ["Ctrl+A", "Select all nodes", (e) => ctrl(e) && key(e, "a"), (ed) => ed.actions.selectAll()],
  ["Delete / Backspace", "Delete the selection", (e) => e.key === "Delete" || e.key === "Backspace", (ed) => ed.actions.deleteSelected()],
  ["Ctrl+M", "Mute / unmute the selected nodes", (e) => ctrl(e) && key(e, "m"), (ed) => ed.actions.toggleMode("never")],
  ["Ctrl+B", "Bypass / un-bypass the selected nodes", (e) => ctrl(e) && key(e, "b"), (ed) => ed.actions.toggleMode("bypass")],
  ["Alt+C", "Collapse / expand the selected nodes", (e) => e.altKey && key(e, "c"), (ed) => ed.actions.toggleCollapse()],
  ["Ctrl+G", "Put the selected nodes in a group", (e) => ctrl(e) && key(e, "g"), (ed) => ed.actions.groupSelected()],
  ["F2", "Rename the selected node", (e) => e.key === "F2", (ed) => ed.actions.renameSelected()],
  ["Tab", "Add a node (search palette at the mouse)", (e) => e.key === "Tab" && !ctrl(e), (ed) => ed.actions.openPaletteAtPointer()],
  [".", "Fit the view to the graph", (e) => e.key === "." && !ctrl(e), (ed) => ed.actions.fitView()],
  ["R", "Refresh node definitions and model lists from the server", (e) => key(e, "r") && !ctrl(e) && !e.altKey, (ed) => ed.actions.refreshDefs()],
  ["Q", "Show / hide the queue and history", (e) => key(e, "q") && !ctrl(e), (ed) => ed.actions.toggleQueuePanel()],
  ["Ctrl+S", "Save the workflow (download JSON)", (e) => ctrl(e) && key(e, "s"), (ed) => ed.actions.save()],
  ["Ctrl+O", "Load a workflow (JSON or PNG)", (e) => ctrl(e) && key(e, "o"), (ed) => ed.actions.openFile()],
  ["? / F1", "Show this help", (e) => e.key === "?" || e.key === "F1", (ed) => ed.actions.toggleHelp()],
  ["Escape", "Close menus and dialogs, clear the selection", (e) => e.key === "Escape", (ed) => ed.actions.escape()],
];

export const MOUSE_HELP = [
  ["Drag the background", "Pan"],
  ["Middle-drag", "Pan (anywhere)"],
  ["Wheel", "Zoom around the cursor"],
  ["Double-click the background", "Add a node"],
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
];

function ctrl(event) {
  return event.ctrlKey || event.metaKey;
}

function key(event, letter) {
  return event.key.toLowerCase() === letter;
}

/** Listen for shortcuts on the window, except while typing in a field. */
export function installShortcuts(editor) {
  window.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT" || target.isContentEditable);
    if (typing) return;
    for (const [, , matches, action] of SHORTCUTS) {
      if (matches(event)) {
        event.preventDefault();
        action(editor, event);
        return;
      }
    }
  });
}
