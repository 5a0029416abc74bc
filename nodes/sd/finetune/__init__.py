"""Fine-tuning maths shared by the training nodes (LoRA, Textual Inversion, DreamBooth, Custom Diffusion).

- `data`: image folders with `.txt` captions, the encoded `TrainingSet`, seeded epoch-wise batches;
- `loss`: the denoising (epsilon / v) loss on the model's own schedule, with any trainable tensors
  (`unet_with` runs the UNet with replaced weights, never touching the cached module);
- `loop`: a seeded, resumable loop (`train`) whose state file makes an interrupted run continue bit-exactly.

No node is declared here (nodes/training/ declares them).
"""

from nodes.sd.finetune.data import (
    RESIZE_METHODS,
    TrainingSet,
    batch_indices,
    caption_for,
    encode_training_set,
    image_files,
    load_images,
    stack_states,
)
from nodes.sd.finetune.loop import OPTIMIZERS, TrainResult, derived_seed, make_optimizer, step_generator, train
from nodes.sd.finetune.loss import LOSSES, noise_loss, noisy_latents, regression, unet_with

__all__ = [
    "LOSSES", "OPTIMIZERS", "RESIZE_METHODS", "TrainResult", "TrainingSet", "batch_indices", "caption_for",
    "derived_seed", "encode_training_set", "image_files", "load_images", "make_optimizer", "noise_loss",
    "noisy_latents", "regression", "stack_states", "step_generator", "train", "unet_with",
]
