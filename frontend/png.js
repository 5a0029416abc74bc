// Workflows embedded in PNG files: read the tEXt / iTXt / zTXt chunks that SaveImage writes
// (`nodegraph_workflow`: ours, `workflow`: ComfyUI's UI format, `prompt`: the API format).

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function decode(bytes, latin1 = false) {
  if (latin1) {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return new TextDecoder("latin1").decode(bytes);
    }
  }
  return new TextDecoder("utf-8").decode(bytes);
}

/** All text chunks of a PNG as {keyword: text}; throws if the bytes are not a PNG. */
export async function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new Error("not a PNG file");
  const view = new DataView(buffer instanceof ArrayBuffer ? buffer : bytes.buffer);
  const texts = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = String.fromCharCode(...bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === "IEND") break;
    const nul = data.indexOf(0);
    if (nul > 0 && (type === "tEXt" || type === "iTXt" || type === "zTXt")) {
      const keyword = decode(data.subarray(0, nul), true);
      try {
        if (type === "tEXt") texts[keyword] = decode(data.subarray(nul + 1), true);
        else if (type === "zTXt") texts[keyword] = decode(await inflate(data.subarray(nul + 2)));
        else {
          const compressed = data[nul + 1] === 1;
          let pos = nul + 3;
          pos = data.indexOf(0, pos) + 1; // language tag
          pos = data.indexOf(0, pos) + 1; // translated keyword
          const body = data.subarray(pos);
          texts[keyword] = decode(compressed ? await inflate(body) : body);
        }
      } catch (err) {
        console.warn(`PNG chunk ${keyword} unreadable`, err);
      }
    }
    offset += 12 + length;
  }
  return texts;
}

/** The workflow data embedded in a PNG, best source first; null when it carries none. */
export async function workflowFromPng(buffer) {
  const texts = await readPngText(buffer);
  for (const key of ["nodegraph_workflow", "workflow", "prompt"]) {
    if (!texts[key]) continue;
    try {
      return { key, data: JSON.parse(texts[key]) };
    } catch {
      /* try the next chunk */
    }
  }
  return null;
}
