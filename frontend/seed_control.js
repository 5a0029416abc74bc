// Seeds as ComfyUI users expect them: every seed widget has a "control after generate" (fixed, increment,
// decrement, randomize; randomize for a new node), applied after each queue (execution.js), and a fresh
// browser's default workflow starts from a random seed instead of the one written in the template.

import { SEED_CONTROLS, widgetSpecs } from "./defs.js";
import { controlledValue } from "./widgets.js";

export { SEED_CONTROLS };

/** A random seed in the widget's range (at most 2^50, as ComfyUI, so it stays an exact JavaScript number). */
export function randomSeed(spec) {
  return controlledValue(spec, 0, "randomize");
}

/**
 * A copy of a native workflow whose seeds set to "randomize" get fresh random values; the others (fixed,
 * increment, decrement) keep theirs. Used for the first graph a browser shows and for "load default".
 */
export function withRandomSeeds(workflow, defs) {
  const copy = JSON.parse(JSON.stringify(workflow));
  for (const node of Object.values(copy.nodes || {})) {
    const controls = node.control_after_generate || {};
    for (const spec of widgetSpecs(defs.get(node.type))) {
      if (!spec.controlAfterGenerate || controls[spec.name] !== "randomize") continue;
      node.widgets = { ...(node.widgets || {}), [spec.name]: randomSeed(spec) };
    }
  }
  return copy;
}
