// `window.nodegraphResults`: read-only accessors for the browser tests of the results features (previews,
// gallery, lightbox, side panel). Tests act with real mouse and keyboard events; this only reports.

/** A few numbers that change whenever a decoded picture does: the mean of each channel over an 8×8 copy. */
function pixelSignature(element) {
  const canvas = document.createElement("canvas");
  canvas.width = 8;
  canvas.height = 8;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(element, 0, 0, 8, 8);
  const data = ctx.getImageData(0, 0, 8, 8).data;
  const sums = [0, 0, 0];
  for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) sums[c] += data[i + c];
  return sums.map((sum) => Math.round((sum / 64) * 100) / 100);
}

export function installResultsHook(editor) {
  window.nodegraphResults = Object.freeze({
    /** The preview now on a node: {seq, hash, width, height, pixels}, or null. */
    preview: (id) => {
      const state = editor.execution.runtime(String(id));
      const preview = state && state.preview;
      if (!preview) return null;
      return { seq: preview.seq, hash: preview.hash, width: preview.width, height: preview.height, pixels: pixelSignature(preview.element) };
    },
    previewLog: () => editor.previews.log.map((entry) => ({ ...entry })),
    previewCounts: () => ({ received: editor.previews.received, shown: editor.previews.shown }),
    gallery: () => ({
      tab: editor.gallery.tab,
      session: editor.gallery.session.map((item) => ({ ...item })),
      history: editor.gallery.history.map((item) => ({ ...item })),
      liveSeq: editor.gallery.live.hidden ? null : Number(editor.gallery.live.dataset.seq),
    }),
    lightbox: () => {
      const box = editor.lightbox;
      const item = box.current;
      return {
        visible: box.visible, index: box.index, count: box.items.length, filename: item ? item.filename : null,
        naturalWidth: box.img.naturalWidth, naturalHeight: box.img.naturalHeight, complete: box.img.complete,
        shownWidth: box.img.getBoundingClientRect().width, zoom: Number(box.root.dataset.zoom || 0),
      };
    },
    canvasSize: () => {
      const rect = editor.canvas.el.getBoundingClientRect();
      return { css: rect.width, backing: editor.canvas.el.width, logical: editor.canvas.width };
    },
  });
}
