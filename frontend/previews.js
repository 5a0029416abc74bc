// Live step previews: the server's binary preview frames, decoded one at a time and shown on the node that
// is sampling (and in the gallery's live tile). The server already paces previews (Environment.
// preview_interval_s); here a frame that arrives while another decodes replaces the waiting one, so a slow
// page never builds a backlog, and each decoded frame costs one redraw.

const PREVIEW_IMAGE = 1;
const PREVIEW_IMAGE_WITH_METADATA = 4;
const PNG = 2;
const LOG_KEPT = 64;

/**
 * One binary WebSocket frame as {blob, mime, hash, meta}, or null when it is not a preview.
 * Type 1 (ComfyUI's PREVIEW_IMAGE): uint32 format (1 JPEG, 2 PNG) then the image. Type 4
 * (PREVIEW_IMAGE_WITH_METADATA): uint32 metadata length, metadata JSON ({node_id, display_node_id,
 * prompt_id, image_type}), then the image. All integers big-endian.
 */
export function parsePreviewFrame(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < 8) return null;
  const view = new DataView(buffer);
  const type = view.getUint32(0);
  let start = 8;
  let mime = "image/jpeg";
  let meta = null;
  if (type === PREVIEW_IMAGE) {
    if (view.getUint32(4) === PNG) mime = "image/png";
  } else if (type === PREVIEW_IMAGE_WITH_METADATA) {
    const length = view.getUint32(4);
    if (8 + length > buffer.byteLength) return null;
    try {
      meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, length)));
    } catch {
      return null;
    }
    if (meta && typeof meta.image_type === "string") mime = meta.image_type;
    start = 8 + length;
  } else {
    return null;
  }
  const bytes = new Uint8Array(buffer, start);
  return { blob: new Blob([bytes], { type: mime }), mime, hash: fingerprint(bytes), meta: meta || null };
}

/** FNV-1a of the image bytes: tells two previews apart without decoding them (tests read it). */
function fingerprint(bytes) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) hash = Math.imul(hash ^ bytes[i], 0x01000193);
  return (hash >>> 0).toString(16);
}

export class Previews {
  constructor(editor) {
    this.editor = editor;
    this.waiting = null;
    this.decoding = false;
    this.received = 0;
    this.shown = 0;
    /** The latest shown preview: {nodeId, promptId, element, width, height, hash, seq}. */
    this.latest = null;
    /** Recently shown previews {nodeId, hash, width, height, seq}, newest last (tests read them). */
    this.log = [];
    this.listeners = new Set();
    editor.api.onMessage((type, data) => {
      if (type === "preview_frame" && editor.previewMode !== "none") this.receive(data);  // settings: preview mode
      else if (type === "execution_start") this.promptId = data.prompt_id;
    });
  }

  onShow(listener) {
    this.listeners.add(listener);
  }

  /** Which node a frame belongs to: its metadata, else the node the server last said is executing. */
  receive(frame) {
    const meta = frame.meta || {};
    const nodeId = meta.display_node_id ?? meta.node_id ?? this.editor.execution.runningNode;
    if (nodeId === null || nodeId === undefined) return;
    this.received++;
    this.waiting = { ...frame, nodeId: String(nodeId), promptId: meta.prompt_id || this.promptId || null };
    if (!this.decoding) this.decodeNext();
  }

  async decodeNext() {
    const frame = this.waiting;
    this.waiting = null;
    if (!frame) return;
    this.decoding = true;
    const url = URL.createObjectURL(frame.blob);
    const img = new Image();
    img.src = url;
    try {
      await img.decode(); // decoded pixels stay with the element: the URL is not needed past this
      this.show(frame, img);
    } catch {
      /* a broken frame: skip it */
    } finally {
      URL.revokeObjectURL(url);
      this.decoding = false;
      if (this.waiting) this.decodeNext();
    }
  }

  show(frame, img) {
    const state = this.editor.execution.ensure(frame.nodeId);
    const previous = state.preview;
    const width = img.naturalWidth;
    const height = img.naturalHeight;
    this.shown++;
    state.preview = { element: img, width, height, hash: frame.hash, seq: this.shown };
    // layout gives the node room for the picture: only a new size needs a new layout
    if (!previous || previous.width !== width || previous.height !== height) state.version++;
    this.latest = { nodeId: frame.nodeId, promptId: frame.promptId, element: img, width, height, hash: frame.hash, seq: this.shown };
    this.log.push({ nodeId: frame.nodeId, hash: frame.hash, width, height, seq: this.shown });
    if (this.log.length > LOG_KEPT) this.log.shift();
    this.editor.canvas.setDirty();
    for (const listener of this.listeners) listener(this.latest);
  }
}
