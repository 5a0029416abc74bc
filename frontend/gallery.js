// The results gallery in the side panel: the images made since the page opened ("This session", from the
// `executed` events) and every image in the server's history (/history), newest first, with the live step
// preview on top while a run samples. A thumbnail opens the lightbox on its list.

import { imagesOfEntry } from "./run_results.js";

const HISTORY_ITEMS = 200;
const SESSION_KEPT = 500;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const keyOf = (item) => `${item.type}/${item.subfolder || ""}/${item.filename}`;

export class Gallery {
  constructor(editor, panel) {
    this.editor = editor;
    this.session = [];
    this.history = [];
    this.tab = "session";
    this.loading = false;
    this.historyLoaded = false;
    this.root = el("section", "gallery");
    const heading = el("h4", "", "Results");
    const tabs = el("div", "gallery-tabs");
    this.tabButtons = {};
    for (const [tab, label] of [["session", "This session"], ["history", "All history"]]) {
      const tabButton = el("button", "small gallery-tab", label);
      tabButton.dataset.tab = tab;
      tabButton.addEventListener("click", () => this.showTab(tab));
      this.tabButtons[tab] = tabButton;
      tabs.appendChild(tabButton);
    }
    this.live = el("figure", "gallery-live");
    this.live.hidden = true;
    this.liveCaption = el("figcaption", "", "");
    this.live.appendChild(this.liveCaption);
    this.grid = el("div", "gallery-grid");
    this.root.append(heading, tabs, this.live, this.grid);
    panel.appendChild(this.root);
    editor.api.onMessage((type, data) => this.onMessage(type, data));
    editor.previews.onShow((preview) => this.showLive(preview));
    this.render();
  }

  get items() {
    return this.tab === "session" ? this.session : this.history;
  }

  onMessage(type, data) {
    if (type === "executed" && data.output && data.output.images) {
      const fresh = data.output.images.filter((image) => image && image.filename)
        .map((image) => ({ ...image, type: image.type || "output", promptId: data.prompt_id, nodeId: String(data.node) }));
      const known = new Set(this.session.map(keyOf));
      this.session.unshift(...fresh.filter((item) => !known.has(keyOf(item))));
      this.session.length = Math.min(this.session.length, SESSION_KEPT);
      if (this.tab === "session") this.render();
    } else if (type === "execution_success" || type === "execution_error" || type === "execution_interrupted") {
      this.live.hidden = true;
      if (this.tab === "history") this.loadHistory();
    }
  }

  showTab(tab) {
    this.tab = tab;
    if (tab === "history") this.loadHistory();
    this.render();
  }

  /** Re-read the server's history (the last HISTORY_ITEMS prompts), newest image first. */
  async loadHistory() {
    if (this.loading) return;
    this.loading = true;
    try {
      const history = (await this.editor.api.getHistory(HISTORY_ITEMS)) || {};
      this.history = Object.entries(history).reverse().flatMap(([promptId, entry]) => imagesOfEntry(promptId, entry));
      this.historyLoaded = true;
    } catch (err) {
      this.editor.notify(`History unavailable: ${err.message}`, "error");
    } finally {
      this.loading = false;
    }
    if (this.tab === "history") this.render();
  }

  /** The step preview of the running sampler, above the thumbnails (the decoded element itself, no copy). */
  showLive(preview) {
    const old = this.live.querySelector("img");
    if (old !== preview.element) {
      if (old) old.remove();
      preview.element.className = "gallery-live-image";
      preview.element.alt = "step preview";
      this.live.insertBefore(preview.element, this.liveCaption);
    }
    const node = this.editor.graph.nodes.get(preview.nodeId);
    const title = node ? this.editor.titleOf(node) : `node ${preview.nodeId}`;
    this.liveCaption.textContent = `Preview · ${title} #${preview.nodeId}`;
    this.live.dataset.seq = String(preview.seq);
    this.live.hidden = false;
  }

  render() {
    for (const [tab, tabButton] of Object.entries(this.tabButtons)) {
      tabButton.classList.toggle("active", tab === this.tab);
      const count = tab === "session" ? `${this.session.length}` : this.historyLoaded ? `${this.history.length}` : "…";
      tabButton.textContent = `${tab === "session" ? "This session" : "All history"} (${count})`;
    }
    const items = this.items;
    this.grid.textContent = "";
    if (!items.length) {
      this.grid.appendChild(el("div", "queue-empty", this.tab === "session" ? "No images yet this session" : "No images in the history"));
      return;
    }
    items.forEach((item, index) => {
      const thumb = el("img", "gallery-thumb");
      thumb.loading = "lazy";
      thumb.src = this.editor.api.viewUrl(item);
      thumb.alt = item.filename;
      thumb.title = item.subfolder ? `${item.subfolder}/${item.filename}` : item.filename;
      thumb.dataset.filename = item.filename;
      thumb.addEventListener("click", () => this.editor.lightbox.open([...items], index));
      this.grid.appendChild(thumb);
    });
  }
}
