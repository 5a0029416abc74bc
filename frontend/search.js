// Fuzzy node search by name, category and socket type. Each word of a query must match: a name or class
// name (in order, letters may be skipped: "ksadv" finds "KSampler (Advanced)"), a category, or a socket type;
// "in:LATENT" / "out:IMAGE" / "type:MASK" keep only nodes taking / giving / having that type. Test and
// deprecated nodes rank last unless asked for.

const INTERNAL_CATEGORY = /(^|\/)(_for_testing|testing|test|deprecated)(\/|$)/i;
const TYPE_FILTER = /^(in|out|type|input|output):(.+)$/i;

/** Whether a node type is internal (test or deprecated): listed last, never preselected. */
export function isInternal(def) {
  return INTERNAL_CATEGORY.test(def.category || "") || Boolean(def.deprecated) || /\(deprecated\)/i.test(def.displayName);
}

function isWordStart(text, i) {
  if (i === 0) return true;
  const before = text[i - 1];
  const here = text[i];
  return /[\s_/()\-.:]/.test(before) || (/[a-z0-9]/.test(before) && /[A-Z]/.test(here));
}

/**
 * How well `term` (lower case) matches `text`: 0 when its letters are not all in `text` in order; more for
 * an exact match, a prefix, a substring at a word start, then for subsequences whose letters sit at word
 * starts and next to each other (the fzf-style bonuses).
 */
export function fuzzyScore(text, term) {
  if (!term) return 0;
  const lower = text.toLowerCase();
  if (lower === term) return 1000;
  if (lower.startsWith(term)) return 800 - Math.min(100, lower.length - term.length);
  const at = lower.indexOf(term);
  if (at >= 0) return (isWordStart(text, at) ? 600 : 450) - Math.min(100, at);
  let score = 0;
  let last = -2;
  let t = 0;
  for (let i = 0; i < lower.length && t < term.length; i++) {
    if (lower[i] !== term[t]) continue;
    score += 10 + (isWordStart(text, i) ? 25 : 0) + (i === last + 1 ? 15 : 0);
    score -= last >= 0 ? Math.min(8, i - last - 1) : Math.min(15, i);
    last = i;
    t++;
  }
  if (t < term.length) return 0;
  return Math.max(1, Math.min(400, score));
}

function socketTypes(def) {
  return {
    inputs: new Set(def.inputs.filter((spec) => !spec.widget || spec.type !== "COMBO").map((spec) => spec.type.toUpperCase())),
    outputs: new Set(def.outputs.map((out) => String(out.type).toUpperCase())),
  };
}

/** Split a query into words and type filters ({side: "in" | "out" | "any", type}). */
export function parseQuery(query) {
  const words = [];
  const filters = [];
  for (const token of query.trim().split(/\s+/).filter(Boolean)) {
    const found = TYPE_FILTER.exec(token);
    if (found) {
      const side = found[1].toLowerCase().startsWith("in") ? "in" : found[1].toLowerCase().startsWith("out") ? "out" : "any";
      filters.push({ side, type: found[2].toUpperCase() });
    } else words.push(token.toLowerCase());
  }
  return { words, filters };
}

function passesFilters(types, filters) {
  return filters.every(({ side, type }) => (side !== "out" && types.inputs.has(type)) || (side !== "in" && types.outputs.has(type)));
}

function wordScore(def, types, word) {
  const name = fuzzyScore(def.displayName, word);
  const id = fuzzyScore(def.type, word) * 0.9;
  const category = fuzzyScore(def.category || "", word) * 0.4;
  const upper = word.toUpperCase();
  const socket = types.outputs.has(upper) ? 300 : types.inputs.has(upper) ? 250 : 0;
  return Math.max(name, id, category, socket);
}

/** Search score of a definition for a query (0: no match). Every word and every type filter must match. */
export function searchScore(def, query) {
  const { words, filters } = parseQuery(query);
  if (!words.length && !filters.length) return 0;
  const types = socketTypes(def);
  if (!passesFilters(types, filters)) return 0;
  let total = words.length ? 0 : 100;
  for (const word of words) {
    const score = wordScore(def, types, word);
    if (!score) return 0;
    total += score;
  }
  if (words.length > 1 && def.displayName.toLowerCase().startsWith(words.join(" "))) total += 200;
  const askedForInternal = words.some((word) => /test|deprecated/.test(word));
  return isInternal(def) && !askedForInternal ? total * 0.3 : total;
}

/** A short "in → out" line of a node's socket types, shown under search results. */
export function signature(def) {
  const { inputs, outputs } = socketTypes(def);
  const side = (set) => [...set].filter((type) => type !== "COMBO").slice(0, 4).join(", ");
  return `${side(inputs) || "—"} → ${side(outputs) || "—"}`;
}
