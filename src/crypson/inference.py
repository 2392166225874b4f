"""No-grad forward passes over many inputs: how large a chunk, the one chunked loop, and the one
per-class cGAN sampler.

On a CPU, chunks of the decoder's size (its 32-channel 16x16 activations are 32 KB an image) stay fast
only while a chunk's buffers are small: from a few hundred images on, each forward pass allocates
buffers that glibc maps and unmaps, and the page faults cost more than the arithmetic (measured on a
2-core CPU, 65,536 latents through the classifier: 12.6 s in chunks of 65,536, 7.4 s in 256s, 4.7 s in
128s, where the system time fell from 4.8 s to 0). A GPU wants large chunks instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:
    from crypson.models.cgan import Generator

CPU_CHUNK = 128
ACCELERATOR_CHUNK = 8192

Output = TypeVar("Output", torch.Tensor, tuple[torch.Tensor, ...])


def inference_chunk(device: torch.device | str) -> int:
    """Inputs per forward pass for inference on `device`."""
    return CPU_CHUNK if torch.device(device).type == "cpu" else ACCELERATOR_CHUNK


@torch.no_grad()
def chunked(forward: Callable[[torch.Tensor], Output], inputs: torch.Tensor, chunk: int) -> Output:
    """`forward` over `inputs` in consecutive chunks, without autograd; the outputs concatenated.

    The chunks are inputs[0:chunk], inputs[chunk:2 chunk], ...: their sizes depend on len(inputs) only,
    never on the values (the sender's constant work, codec.draw_candidates), and `forward` sees them in
    order (a random draw inside it happens in the same order as in one pass).

    Args:
        forward: a chunk (B, ...) -> a tensor, or a tuple of tensors, with B rows each. It moves the
            chunk to its device and its outputs back where the caller wants them.
        inputs: (N, ...) tensor.
        chunk: rows per call, >= 1 (`inference_chunk(device)` suits the device).
    Returns:
        forward's outputs over all N rows, concatenated along the first dimension (each element of a
        tuple separately). N = 0: forward's output for the empty input.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    if len(inputs) == 0:
        return forward(inputs)
    outputs = [forward(inputs[start : start + chunk]) for start in range(0, len(inputs), chunk)]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


@torch.no_grad()
def sample_per_class(generator: Generator, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` fresh cGAN images of every class, class by class, from noise seeded by `seed`.

    The generator runs in eval mode (BatchNorm's running statistics) and is left in the mode it was
    in; its noise comes from its own seeded generator, so the global RNG is untouched.

    Args:
        generator: the cGAN generator, on any device.
        per_class: images of each of its K classes.
        seed: seeds the noise: the same seed gives the same images.
    Returns:
        (images (K * per_class, 1, 32, 32) in [0, 1], class indices (K * per_class,): 0 0 .. 1 1 ..), on CPU.
    """
    was_training = generator.training
    generator.eval()
    try:
        device = generator.label_embedding.weight.device
        labels = torch.arange(generator.num_classes, device=device).repeat_interleave(per_class)
        noise = generator.sample_noise(len(labels), torch.Generator(device=device).manual_seed(seed))
        # In chunks: eval-mode BatchNorm treats each image alone, and one pass over tens of thousands of images
        # would hold every layer's activations at once (a report-width generator: tens of GB).
        images = chunked(lambda rows: generator.to_unit_range(generator(noise[rows], labels[rows])).float().cpu(),
                         torch.arange(len(labels), device=device), inference_chunk(device))
    finally:
        generator.train(was_training)
    return images, labels.cpu()
