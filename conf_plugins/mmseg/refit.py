"""Refit the success branch on the final network's frozen features with held-out data.

The success paper trains the branch on the training images, where the segmenter is nearly
always right and its few failures are not those it makes on new images; an early snapshot
(§3.2) only softens this. Here the trained network is frozen and a fresh branch of the same
shape learns success / failure on held-out labelled images (e.g. ``calib_dataloader``),
where the failures are representative. The refitted branch becomes the model's snapshot
(``snapshot_taken``), so inference, checkpoints and Bayes binning use it unchanged.
"""

import copy

import torch
import torch.nn.functional as F
from mmseg.models.utils import resize

from .success_head import balanced_class_weight, seg_confidence_channels, success_target


@torch.no_grad()
def branch_inputs(model, dataloader, images=None):
    """``(branch input (N, C', h, w), success target (N, H, W))`` of the dataloader's images
    (only the indices in ``images`` when given), captured where the head's classifier reads.

    Assumes whole-image inference of unpadded images (one classifier call per batch, label
    at the input's resolution), as in the head's own training loss.
    """
    head = model.decode_head
    captured = []
    hook = head.conv_seg.register_forward_hook(
        lambda module, args, out: captured.append((args[0].detach(), out.detach()))
    )
    inputs, targets = [], []
    try:
        for index, batch in enumerate(dataloader):
            if images is not None and index not in images:
                continue
            captured.clear()
            samples = model.test_step(batch)
            if len(captured) != 1:
                raise ValueError("refitting needs whole-image inference (test_cfg mode='whole')")
            feat, seg_logits = captured[0]
            label = torch.stack([s.gt_sem_seg.data for s in samples]).squeeze(1).long()
            if "seg_confidence" in head.success_inputs:
                feat = torch.cat([feat, seg_confidence_channels(seg_logits)], dim=1)
            inputs.append(feat)
            targets.append(success_target(seg_logits, label, head.ignore_index, head.align_corners))
    finally:
        hook.remove()
    if not inputs:
        raise ValueError("no images to refit the success branch on")
    return torch.cat(inputs), torch.cat(targets)


def refit_success_branch(
    model, dataloader, iters: int = 300, lr: float = 0.01, balanced: bool = True, images=None, seed: int = 0
) -> dict:
    """Train a freshly initialised copy of the success branch on ``dataloader``'s images with
    everything else frozen (full batch, Adam, cross-entropy, class-balanced if ``balanced``),
    then install it as the snapshot. Returns a summary (pixels, failure rate, final loss)."""
    head = model.decode_head
    x, target = branch_inputs(model, dataloader, images)
    labelled = target != head.ignore_index
    if not labelled.any():
        raise ValueError("every pixel of the refit images is ignore_index")
    torch.manual_seed(seed)
    branch = copy.deepcopy(head.success_branch)
    for module in branch.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    branch.train().requires_grad_(True)
    weight = balanced_class_weight(target, head.ignore_index) if balanced else None
    optimizer = torch.optim.Adam(branch.parameters(), lr=lr)
    for _ in range(iters):
        logits = resize(branch(x), size=target.shape[-2:], mode="bilinear", align_corners=head.align_corners)
        loss = F.cross_entropy(logits, target, weight=weight, ignore_index=head.ignore_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    branch.eval()
    with torch.no_grad():
        head.success_snapshot.load_state_dict(branch.state_dict())
        head.snapshot_taken.fill_(True)
    head.predict_with_snapshot = True
    return {
        "pixels": int(labelled.sum()),
        "failure_rate": float((target[labelled] == 0).float().mean()),
        "loss": float(loss),
        "iters": iters,
        "balanced": balanced,
    }
