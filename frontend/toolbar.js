// The top bar: Queue with a batch count, file commands, view commands, queue size and connection state.

export class Toolbar {
  constructor(editor, root) {
    this.editor = editor;
    this.root = root;
    this.batchInput = root.querySelector("#batch-count");
    this.queueSize = root.querySelector("#queue-size");
    this.connection = root.querySelector("#connection");
    const actions = editor.actions;
    const commands = {
      queue: () => actions.queue(),
      cancel: () => actions.interrupt(),
      settings: () => editor.settingsRoom.toggle(),
      "toggle-queue": () => actions.toggleQueuePanel(),
      save: () => actions.save(),
      load: () => actions.openFile(),
      "export-api": () => actions.exportApi(),
      "load-default": () => actions.loadDefault(),
      clear: () => actions.clear(),
      "fit-view": () => actions.fitView(),
      refresh: () => actions.refreshDefs(),
      undo: () => actions.undo(),
      redo: () => actions.redo(),
      help: () => actions.toggleHelp(),
    };
    for (const button of root.querySelectorAll("[data-action]")) {
      const command = commands[button.dataset.action];
      if (command) button.addEventListener("click", () => {
        command();
        button.blur();
      });
    }
  }

  batchCount() {
    const value = Math.round(Number(this.batchInput.value));
    return Number.isFinite(value) ? Math.max(1, Math.min(100, value)) : 1;
  }

  setQueueSize(size) {
    this.queueSize.textContent = `Queue: ${size}`;
  }

  setConnected(connected) {
    this.connection.textContent = connected ? "connected" : "disconnected";
    this.connection.classList.toggle("offline", !connected);
  }
}
