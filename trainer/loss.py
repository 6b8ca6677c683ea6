"""The contrastive loss: symmetric cross-entropy over the scaled N x N cosine-similarity matrix.

Under DDP each process scores its own rows against the features of the whole global batch,
gathered with gradients ("local loss", as in open_clip): the per-process losses average to the
full-batch loss, and DDP's gradient average equals the full-batch gradient.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


class GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the summed gradient of its own slice.

    Works on gloo and NCCL alike (all_reduce only), for equal local batch sizes.
    """

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n: (dist.get_rank() + 1) * n]


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def clip_loss(image_features, text_features, logit_scale):
    """(loss, in-batch image->text top-1 accuracy) for L2-normalised features.

    logit_scale is the multiplier (exp of the learned parameter).
    """
    offset, all_images, all_texts = 0, image_features, text_features
    if distributed():
        offset = dist.get_rank() * image_features.shape[0]
        all_images, all_texts = GatherWithGrad.apply(image_features), GatherWithGrad.apply(text_features)
    logits_per_image = logit_scale * image_features @ all_texts.T
    logits_per_text = logit_scale * text_features @ all_images.T
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    accuracy = (logits_per_image.argmax(dim=-1) == labels).float().mean()
    return loss, accuracy
