// The server's ComfyUI-compatible API over HTTP, and its WebSocket of run events.

import { parsePreviewFrame } from "./previews.js";

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID().replaceAll("-", "");
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export class Api {
  constructor(base = "") {
    this.base = base;
    let id = sessionStorage.getItem("nodegraph.clientId");
    if (!id) {
      id = newClientId();
      sessionStorage.setItem("nodegraph.clientId", id);
    }
    this.clientId = id;
    this.socket = null;
    this.listeners = new Set();
    this.retryMs = 500;
  }

  url(path) {
    return `${this.base}${path}`;
  }

  async request(path, options = {}) {
    let response;
    try {
      response = await fetch(this.url(path), options);
    } catch (err) {
      throw new ApiError(`server unreachable (${path}): ${err.message}`, 0, null);
    }
    const text = await response.text();
    let body = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON: keep the text */
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message || String(body.error) : `${response.status} ${response.statusText}`;
      throw new ApiError(message, response.status, body);
    }
    return body;
  }

  postJson(path, data) {
    return this.request(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
  }

  getObjectInfo() {
    return this.request("/object_info");
  }

  /**
   * Queue an API-format prompt. Our native workflow rides along in extra_pnginfo under `nodegraph_workflow`
   * (SaveImage's chunk of that name); `workflow` is left to ComfyUI's UI format, which the server derives.
   */
  queuePrompt(prompt, workflow, { front = false } = {}) {
    return this.postJson("/prompt", {
      prompt, client_id: this.clientId, extra_data: { extra_pnginfo: { nodegraph_workflow: workflow } },
      ...(front ? { front: true } : {}),
    });
  }

  getQueue() {
    return this.request("/queue");
  }

  deleteQueued(promptIds) {
    return this.postJson("/queue", { delete: promptIds });
  }

  clearQueue() {
    return this.postJson("/queue", { clear: true });
  }

  interrupt(promptId) {
    return this.postJson("/interrupt", promptId ? { prompt_id: promptId } : {});
  }

  getHistory(maxItems = 50) {
    return this.request(`/history?max_items=${maxItems}`);
  }

  getHistoryEntry(promptId) {
    return this.request(`/history/${encodeURIComponent(promptId)}`);
  }

  getModels(folder) {
    return this.request(`/models/${encodeURIComponent(folder)}`);
  }

  async uploadImage(file, overwrite = false) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("type", "input");
    if (overwrite) form.append("overwrite", "true");
    return this.request("/upload/image", { method: "POST", body: form });
  }

  viewUrl({ filename, subfolder = "", type = "output" }) {
    const query = new URLSearchParams({ filename, subfolder, type });
    return this.url(`/view?${query}`);
  }

  onMessage(listener) {
    this.listeners.add(listener);
  }

  emit(type, data) {
    for (const listener of this.listeners) {
      try {
        listener(type, data);
      } catch (err) {
        console.error(`handler for ${type} failed`, err);
      }
    }
  }

  /** Connect the WebSocket (reconnecting with backoff); messages are {type, data}, previews are binary. */
  connect() {
    const base = this.base || `${location.protocol}//${location.host}`;
    // nodegraph_events=1: our own event types (nodegraph.progress) come only to clients that ask for them;
    // previews=1: binary step-preview frames (previews.js shows them).
    const wsUrl = `${base.replace(/^http/, "ws")}/ws?clientId=${encodeURIComponent(this.clientId)}&nodegraph_events=1&previews=1`;
    const socket = new WebSocket(wsUrl);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.retryMs = 500;
      this.emit("connection", { connected: true });
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data !== "string") {
        this.onBinary(event.data);
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && message.type) this.emit(message.type, message.data || {});
    });
    socket.addEventListener("close", () => {
      this.emit("connection", { connected: false });
      setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 8000);
    });
  }

  /** ComfyUI's binary frames: uint32 event type, then 1 = uint32 image format + image, 4 = uint32 metadata
   * length + metadata JSON + image (see previews.js). */
  onBinary(buffer) {
    const frame = parsePreviewFrame(buffer);
    if (frame) this.emit("preview_frame", frame);
  }
}
