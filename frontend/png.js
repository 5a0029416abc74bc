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

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A PNG with tEXt chunks {keyword: text} added before IEND (text as UTF-8, as ComfyUI writes its JSON). */
export function withTextChunks(buffer, texts) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new Error("not a PNG file");
  const iend = bytes.length - 12;
  const encoder = new TextEncoder();
  const chunks = [];
  for (const [keyword, text] of Object.entries(texts)) {
    const body = new Uint8Array([...encoder.encode(`tEXt${keyword}`), 0, ...encoder.encode(text)]);
    const chunk = new Uint8Array(body.length + 8);
    new DataView(chunk.buffer).setUint32(0, body.length - 4);
    chunk.set(body, 4);
    new DataView(chunk.buffer).setUint32(body.length + 4, crc32(body));
    chunks.push(chunk);
  }
  const total = bytes.length + chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const out = new Uint8Array(total);
  out.set(bytes.subarray(0, iend), 0);
  let offset = iend;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  out.set(bytes.subarray(iend), offset);
  return out;
}
