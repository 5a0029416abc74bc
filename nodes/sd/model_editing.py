"""Text-to-image model editing, TIME (Orgad et al. 2023, "Editing Implicit Assumptions in Text-to-Image Diffusion
Models", arXiv 2303.08084): change what a phrase means to the UNet by editing its cross-attention projections.

Every cross-attention key and value projection W (the `to_k`/`to_v` of each `attn2` that reads the text) is
replaced by the closed-form minimiser of (paper, Eq. 5)

    sum_i || W' c_i - W c*_i ||^2 + lambda || W' - W ||_F^2
    =>  W' = (lambda W + sum_i W c*_i c_i^T) (lambda I + sum_i c_i c_i^T)^-1

where c_i runs over the token embeddings of the source prompt (and of its augmented phrasings "A photo of ...",
"An image of ...", "A picture of ...") and c*_i over the embeddings of the destination prompt's matching tokens.
So the source phrase's keys and values become what the destination phrase's were; lambda keeps W' near W for
every other direction. Optional *preserved* prompts add pairs c_i = c*_i (their words keep their meaning), the
preservation term of the paper's follow-ups (UCE, Gandikota et al. 2023).

Token matching follows diffusers' `StableDiffusionModelEditingPipeline.edit_model` when the destination contains
the source's tokens in order (each source token goes to its next occurrence; "an" counts as "a"; the padding
after the end token goes to the destination's padding, in order). For other pairs ("circle" -> "square", which
that pipeline cannot take: it runs past the destination's end) the two token lists are aligned by difflib: equal
runs map in order, a replaced run maps position by position onto its replacement (the last replacement token
standing in when the source run is longer), a deleted token goes to the destination token at that point.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from torch import Tensor

from nodegraph.models import as_ref
from nodes.sd.types import ClipHandle, ModelHandle

AUGMENTATIONS: tuple[str, ...] = ("A photo of ", "An image of ", "A picture of ")
"""diffusers' AUGS_CONST: each prompt is also edited in these phrasings."""
WINDOW = 77


def augmented(prompt: str, augmentations: Sequence[str] = AUGMENTATIONS) -> list[str]:
    """The prompt and its augmented phrasings (a leading "A" is lower-cased after the prefix, as diffusers does)."""
    base = prompt if prompt[:1] != "A" else "a" + prompt[1:]
    return [prompt, *(prefix + base for prefix in augmentations)]


def greedy_alignment(source: Sequence[int], destination: Sequence[int], length: int = WINDOW) -> list[int] | None:
    """diffusers' matching: each source token to its next occurrence in `destination`; then the rest in order.

    Args:
        source, destination: token ids from bos to eos (no padding).
    Returns:
        For each of the `length` source positions, the destination position whose embedding it should take;
        None when the destination does not contain the source's tokens in order.
    """
    indices, j = [], 0
    for token in source:
        while j < len(destination) and destination[j] != token:
            j += 1
        if j == len(destination):
            return None
        indices.append(j)
        j += 1
    indices += range(j, length)
    return (indices + [length - 1] * length)[:length]


def difflib_alignment(source: Sequence[int], destination: Sequence[int], length: int = WINDOW) -> list[int]:
    """Align any two token lists (see the module doc): equal and replaced runs in order; the padding after."""
    indices: list[int] = []
    matcher = difflib.SequenceMatcher(a=list(source), b=list(destination), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            indices += range(j1, j2)
        elif tag == "replace":
            indices += [j1 + min(k, j2 - j1 - 1) for k in range(i2 - i1)]
        elif tag == "delete":
            indices += [min(j1, len(destination) - 1)] * (i2 - i1)
    offset = len(destination) - len(source)
    indices += [min(max(position + offset, 0), length - 1) for position in range(len(source), length)]
    return indices[:length]


def token_alignment(source: Sequence[int], destination: Sequence[int], a_id: int | None = None,
                    an_id: int | None = None, length: int = WINDOW) -> list[int]:
    """Destination position for each source position ("an" read as "a" for the matching only)."""
    if an_id is not None and a_id is not None:
        source = [a_id if t == an_id else t for t in source]
        destination = [a_id if t == an_id else t for t in destination]
    return greedy_alignment(source, destination, length) or difflib_alignment(source, destination, length)


def cross_attention_projections(unet: torch.nn.Module, context_dim: int, *, keys: bool = True) -> list[str]:
    """Names of the weights TIME edits: `to_v` (and `to_k` when `keys`) of every cross-attention that reads
    `context_dim`-wide text embeddings (diffusers' pipeline selects them the same way, by input width)."""
    names = []
    for name, module in unet.named_modules():
        if not name.endswith("attn2") or not hasattr(module, "to_v"):
            continue
        if module.to_v.in_features == context_dim:
            names.append(f"{name}.to_v.weight")
            if keys:
                names.append(f"{name}.to_k.weight")
    return names


@torch.no_grad()
def edited_weight(weight: Tensor, contexts: Tensor, targets: Tensor, lamb: float) -> Tensor:
    """TIME's closed form W' = (lambda W + W T^T C)(lambda I + C^T C)^-1 (in float64; returned in W's dtype).

    Args:
        weight: [out, d] projection.
        contexts: [n, d] source token embeddings c_i.
        targets: [n, d] destination token embeddings c*_i (W c*_i is the value c_i should now give).
        lamb: the regularisation lambda (> 0).
    """
    w = weight.double()
    c, t = contexts.to(w), targets.to(w)
    eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    numerator = lamb * w + (w @ t.T) @ c
    gram = lamb * eye + c.T @ c
    return torch.linalg.solve(gram, numerator.T).T.to(weight.dtype)  # gram is symmetric


def with_replaced_weights(root: torch.nn.Module, weights: dict[str, Tensor]) -> torch.nn.Module:
    """A copy of `root` holding `weights` (parameter name -> new tensor); every other tensor is shared.

    Only the modules on the path to a replaced weight are copied (shallowly), so the cached base is untouched.
    """
    copies: dict[str, torch.nn.Module] = {}

    def copy_of(path: str) -> torch.nn.Module:
        if path not in copies:
            parent_path, _, child = path.rpartition(".")
            original = root if not path else copy_of(parent_path)._modules[child]
            assert original is not None
            clone = copy.copy(original)
            clone._modules = dict(original._modules)  # type: ignore[assignment]
            clone._parameters = dict(original._parameters)  # type: ignore[assignment]
            if path:
                copy_of(parent_path)._modules[child] = clone
            copies[path] = clone
        return copies[path]

    copy_of("")
    for name, tensor in weights.items():
        module_path, _, param = name.rpartition(".")
        copy_of(module_path)._parameters[param] = torch.nn.Parameter(tensor, requires_grad=False)
    return copies[""]


@dataclass(frozen=True)
class EditPairs:
    """Token embeddings an edit maps: contexts[i] (source) should act as targets[i] (destination). [n, d] each."""

    contexts: Tensor
    targets: Tensor

    @property
    def fingerprint(self) -> str:
        """A digest of the embeddings: equal edits of one base are one derived model."""
        digest = hashlib.sha1()
        for tensor in (self.contexts, self.targets):
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def _ids_and_embeddings(clip: ClipHandle, text: str) -> tuple[list[int], Tensor]:
    """(token ids bos..eos, [77, d] embeddings) of a one-window prompt, as CLIPTextEncode embeds it."""
    from nodes.sd.text import encode, tokenize

    windows = tokenize(clip, text)[0]
    if len(windows) != 1:
        raise ValueError(f"model editing: the prompt {text!r} is longer than one 77-token window")
    tokenizer = clip.tokenizers[0]
    ids = [token.id for token in windows[0]]
    end = ids.index(tokenizer.eos_token_id) + 1
    return ids[:end], encode(clip, text).embeds[0]


def joined(pairs: Sequence[EditPairs]) -> EditPairs:
    """Several edits (and preserved prompts) solved together: their pairs concatenated."""
    return EditPairs(torch.cat([p.contexts for p in pairs]), torch.cat([p.targets for p in pairs]))


def edit_pairs(clip: ClipHandle, source: str, destination: str, *, augment: bool = True,
               preserve: Sequence[str] = ()) -> EditPairs:
    """The (context, target) embedding pairs of an edit: every token position of the source prompt (and its
    augmented phrasings) paired with its matched destination position; each preserved prompt paired with itself."""
    if not source.strip() or not destination.strip():
        raise ValueError("model editing: source_prompt and destination_prompt must both be non-empty")
    tokenizer = clip.tokenizers[0]
    a_ids, an_ids = tokenizer.word_ids("a"), tokenizer.word_ids("an")
    a_id = a_ids[0] if len(a_ids) == 1 else None
    an_id = an_ids[0] if len(an_ids) == 1 else None
    prompts = list(zip(augmented(source), augmented(destination))) if augment else [(source, destination)]
    contexts, targets = [], []
    for old, new in prompts:
        old_ids, old_embeds = _ids_and_embeddings(clip, old)
        new_ids, new_embeds = _ids_and_embeddings(clip, new)
        contexts.append(old_embeds)
        targets.append(new_embeds[token_alignment(old_ids, new_ids, a_id, an_id, old_embeds.shape[0])])
    for text in preserve:
        embeds = _ids_and_embeddings(clip, text)[1]
        contexts.append(embeds)
        targets.append(embeds)
    return EditPairs(torch.cat(contexts), torch.cat(targets))


def edited_unet(pairs: EditPairs, lamb: float, keys: bool, unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of `unet` with TIME's edit applied to its cross-attention projections (the base is untouched)."""
    parameters = dict(unet.named_parameters())
    names = cross_attention_projections(unet, pairs.contexts.shape[1], keys=keys)
    if not names:
        raise ValueError(f"model editing: the UNet has no cross-attention reading {pairs.contexts.shape[1]}-wide "
                         f"text embeddings (is the CLIP from another model?)")
    return with_replaced_weights(unet, {name: edited_weight(parameters[name].detach(), pairs.contexts,
                                                            pairs.targets, lamb) for name in names})


@dataclass(frozen=True)
class EditTag:
    """What an edited UNet derives from its base by (the model manager's cache key)."""

    fingerprint: str
    lamb: float
    keys: bool
    pairs: EditPairs = field(compare=False, hash=False)


def _edited_bytes(keys: bool, context_dim: int, module: torch.nn.Module) -> int:
    parameters = dict(module.named_parameters())
    return sum(parameters[n].numel() * parameters[n].element_size()
               for n in cross_attention_projections(module, context_dim, keys=keys))


def edit_model(model: ModelHandle, pairs: EditPairs, *, lamb: float, keys: bool = True) -> ModelHandle:
    """A new MODEL handle whose UNet carries the edit, built once by the model manager from the handle's UNet."""
    if lamb <= 0:
        raise ValueError(f"model editing: lambda must be > 0, got {lamb}")
    base = as_ref(model.unet_ref, "UNet")
    tag = EditTag(pairs.fingerprint, float(lamb), keys, pairs)
    ref = base.derive(("time_edit", tag), partial(edited_unet, pairs, float(lamb), keys),
                      name=f"{base.name} + TIME edit {pairs.fingerprint[:8]}",
                      size=partial(_edited_bytes, keys, int(pairs.contexts.shape[1])))
    return replace(model, unet_ref=ref)
