// Node definitions from the server's /object_info, and the socket-type rules the engine applies.
// The editor knows no node type by name: everything here comes from the server, so node packs
// appear in the palette with no editor change.

export const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);

// Output types a widget converted to a socket accepts (nodegraph/schema.py LINKABLE_INTO_WIDGET).
const LINKABLE_INTO = {
  INT: ["INT"],
  FLOAT: ["FLOAT", "INT"],
  STRING: ["STRING"],
  BOOLEAN: ["BOOLEAN"],
  COMBO: ["COMBO", "STRING"],
};

export const SEED_CONTROLS = ["fixed", "increment", "decrement", "randomize"];

/** Parse one `/object_info` input entry `[type_or_options, opts]` into our input description. */
function parseInput(name, entry, optional) {
  const [rawType, rawOpts] = Array.isArray(entry) ? entry : [entry, {}];
  const opts = rawOpts || {};
  let type = rawType;
  let options = null;
  if (Array.isArray(rawType)) {
    type = "COMBO";
    options = rawType.map(String);
  } else if (rawType === "COMBO") {
    options = (opts.options || []).map(String);
  }
  const forceInput = Boolean(opts.forceInput || opts.force_input);
  const widget = WIDGET_TYPES.has(type) && !forceInput;
  let dflt = opts.default;
  if (dflt === undefined) {
    if (type === "COMBO") dflt = options && options.length ? options[0] : "";
    else if (type === "INT" || type === "FLOAT") dflt = opts.min !== undefined && opts.min > 0 ? opts.min : 0;
    else if (type === "STRING") dflt = "";
    else if (type === "BOOLEAN") dflt = false;
  }
  return {
    name,
    type,
    optional,
    widget,
    options,
    default: dflt,
    min: opts.min,
    max: opts.max,
    step: opts.step,
    round: opts.round,
    multiline: Boolean(opts.multiline),
    controlAfterGenerate: Boolean(opts.control_after_generate),
    imageUpload: Boolean(opts.image_upload),
    tooltip: opts.tooltip || "",
  };
}

/** One node definition from its `/object_info` entry. */
export function parseNodeInfo(type, info) {
  const inputs = [];
  const sections = [["required", false], ["optional", true]];
  for (const [section, optional] of sections) {
    const table = (info.input && info.input[section]) || {};
    const order = (info.input_order && info.input_order[section]) || Object.keys(table);
    for (const name of order) {
      if (table[name] !== undefined) inputs.push(parseInput(name, table[name], optional));
    }
  }
  const outTypes = info.output || [];
  const outNames = info.output_name || [];
  const outIsList = info.output_is_list || [];
  const outputs = outTypes.map((t, i) => ({
    type: Array.isArray(t) ? "COMBO" : String(t),
    name: outNames[i] || (Array.isArray(t) ? "COMBO" : String(t)),
    isList: Boolean(outIsList[i]),
  }));
  return {
    type,
    displayName: info.display_name || info.name || type,
    category: info.category || "other",
    description: info.description || "",
    outputNode: Boolean(info.output_node),
    inputIsList: Boolean(info.input_is_list),
    deprecated: Boolean(info.deprecated),
    experimental: Boolean(info.experimental),
    inputs,
    outputs,
    inputMap: new Map(inputs.map((spec) => [spec.name, spec])),
  };
}

/** All definitions by type id. */
export function parseObjectInfo(objectInfo) {
  const defs = new Map();
  for (const [type, info] of Object.entries(objectInfo || {})) {
    try {
      defs.set(type, parseNodeInfo(type, info));
    } catch (err) {
      console.warn(`object_info entry ${type} is unreadable`, err);
    }
  }
  return defs;
}

/** The output types an input accepts: a converted widget takes its compatible value types. */
export function acceptedTypes(spec) {
  const linkable = LINKABLE_INTO[spec.type];
  if (linkable) return linkable;
  return String(spec.type).split(",");
}

/** Whether an output of type `outType` may feed the input `spec` (the engine's rule, so the server agrees). */
export function canConnect(outType, spec) {
  if (!spec || outType === undefined || outType === null) return false;
  if (outType === "*" || spec.type === "*") return true;
  const outs = String(outType).split(",");
  const accepted = acceptedTypes(spec);
  return outs.some((t) => accepted.includes(t));
}

/** The widget inputs of a definition, in declaration order (ComfyUI's widgets_values order). */
export function widgetSpecs(def) {
  return def ? def.inputs.filter((spec) => spec.widget) : [];
}

/** A widget value clamped and rounded to its spec (what the engine would accept). */
export function normaliseNumber(spec, value) {
  let v = Number(value);
  if (!Number.isFinite(v)) v = Number(spec.default) || 0;
  if (spec.min !== undefined && spec.min !== null) v = Math.max(spec.min, v);
  if (spec.max !== undefined && spec.max !== null) v = Math.min(spec.max, v);
  if (spec.type === "INT") return Math.round(v);
  const quantum = spec.round || spec.step;
  if (quantum) {
    const decimals = Math.max(0, Math.ceil(-Math.log10(quantum)) + 1);
    v = Number((Math.round(v / quantum) * quantum).toFixed(Math.min(decimals, 10)));
  }
  return v;
}

const KNOWN_COLOURS = {
  MODEL: "#b39ddb",
  CLIP: "#ffd500",
  VAE: "#ff6e6e",
  CONDITIONING: "#ffa931",
  LATENT: "#ff9cf9",
  IMAGE: "#64b5f6",
  MASK: "#81c784",
  CLIP_VISION: "#a8dadc",
  CLIP_VISION_OUTPUT: "#ad7452",
  CONTROL_NET: "#00d78d",
  STYLE_MODEL: "#c2ffae",
  UPSCALE_MODEL: "#d1b3ff",
  SIGMAS: "#cdffcd",
  NOISE: "#b0b0b0",
  SAMPLER: "#ecb4b4",
  GUIDER: "#66ffff",
  CROSS_ATTENTION_MAPS: "#f2a65a",
  INT: "#7dc5ff",
  FLOAT: "#c7e6a8",
  STRING: "#9be79b",
  BOOLEAN: "#e0a0e0",
  COMBO: "#c9c9c9",
};

const colourCache = new Map();

/** A stable socket colour per type: ComfyUI's palette for known types, a hashed hue otherwise. */
export function typeColour(type) {
  const key = String(type || "");
  let colour = KNOWN_COLOURS[key];
  if (colour) return colour;
  colour = colourCache.get(key);
  if (!colour) {
    let hash = 0;
    for (let i = 0; i < key.length; i++) hash = (hash * 31 + key.charCodeAt(i)) | 0;
    colour = `hsl(${Math.abs(hash) % 360}, 65%, 65%)`;
    colourCache.set(key, colour);
  }
  return colour;
}
