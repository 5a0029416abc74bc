// The queue/history side panel: running and pending prompts (each with Cancel), finished ones with
// their status and images, and a button to load a finished prompt's workflow back into the editor.

import { imagesOfEntry, restoreRun } from "./run_results.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class QueuePanel {
  constructor(editor, root) {
    this.editor = editor;
    this.root = root;
    this.busy = false;
    this.again = false;
    root.querySelector("[data-action=close-queue]").addEventListener("click", () => this.toggle(false));
    root.querySelector("[data-action=clear-queue]").addEventListener("click", () => this.clearPending());
    this.running = root.querySelector(".queue-running");
    this.pending = root.querySelector(".queue-pending");
    this.history = root.querySelector(".queue-history");
  }

  get visible() {
    return !this.root.hidden;
  }

  toggle(show = !this.visible) {
    this.root.hidden = !show;
    if (show) this.refresh();
  }

  /** Re-read /queue and /history (coalescing calls that come while a refresh is under way). */
  async refresh() {
    if (!this.visible) return;
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    try {
      const [queue, history] = await Promise.all([this.editor.api.getQueue(), this.editor.api.getHistory(30)]);
      this.render(queue || {}, history || {});
    } catch (err) {
      this.running.textContent = `Queue unavailable: ${err.message}`;
    } finally {
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    }
  }

  render(queue, history) {
    const running = queue.queue_running || [];
    const pending = queue.queue_pending || [];
    this.fillList(this.running, running, "running", "Nothing running");
    this.fillList(this.pending, [...pending].sort((a, b) => a[0] - b[0]), "pending", "Nothing pending");
    this.history.textContent = "";
    const entries = Object.entries(history).reverse();
    if (!entries.length) this.history.appendChild(el("div", "queue-empty", "No history yet"));
    for (const [promptId, entry] of entries) {
      const row = el("div", "queue-item history-item");
      row.dataset.promptId = promptId;
      const number = entry.prompt ? entry.prompt[0] : "?";
      const status = (entry.status && entry.status.status_str) || "done";
      row.appendChild(el("span", `queue-label status-${status}`, `#${number} ${status}`));
      const images = imagesOfEntry(promptId, entry);
      const thumbs = el("span", "queue-thumbs");
      images.slice(0, 4).forEach((image, index) => {
        const img = el("img", "queue-thumb");
        img.src = this.editor.api.viewUrl(image);
        img.alt = image.filename;
        img.title = "Open in the viewer";
        img.addEventListener("click", () => this.editor.lightbox.open(images, index));
        thumbs.appendChild(img);
      });
      row.appendChild(thumbs);
      if (entry.prompt) {
        const load = el("button", "small", "Load");
        load.title = "Load this prompt's workflow, with its images on its nodes";
        load.addEventListener("click", () => restoreRun(this.editor, promptId, entry));
        row.appendChild(load);
      }
      this.history.appendChild(row);
    }
  }

  fillList(container, items, kind, emptyText) {
    container.textContent = "";
    if (!items.length) container.appendChild(el("div", "queue-empty", emptyText));
    for (const item of items) {
      const [number, promptId] = item;
      const row = el("div", `queue-item ${kind}-item`);
      row.dataset.promptId = promptId;
      row.appendChild(el("span", "queue-label", `#${number} ${kind}`));
      const cancel = el("button", "small danger", "Cancel");
      cancel.addEventListener("click", () => this.cancel(promptId, kind));
      row.appendChild(cancel);
      container.appendChild(row);
    }
  }

  async cancel(promptId, kind) {
    try {
      if (kind === "running") await this.editor.api.interrupt(promptId);
      else await this.editor.api.deleteQueued([promptId]);
    } catch (err) {
      this.editor.notify(`Cancel failed: ${err.message}`, "error");
    }
    this.refresh();
  }

  async clearPending() {
    try {
      await this.editor.api.clearQueue();
    } catch (err) {
      this.editor.notify(`Clear failed: ${err.message}`, "error");
    }
    this.refresh();
  }
}
