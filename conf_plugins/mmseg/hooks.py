"""Training hook for the success branch's early checkpoint (success-prediction paper §3.2)."""

import numbers

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from .success_head import SuccessBranchMixin


def success_head_of(model) -> SuccessBranchMixin:
    """The success decode head of a (possibly DDP-wrapped) segmentor, or a clear error."""
    model = model.module if is_model_wrapper(model) else model
    head = getattr(model, "decode_head", None)
    if not isinstance(head, SuccessBranchMixin):
        raise TypeError(
            f"the model's decode head is {type(head).__name__}, not a success head "
            "(FCNSuccessHead, ASPPSuccessHead, DepthwiseSeparableASPPSuccessHead)"
        )
    return head


@HOOKS.register_module()
class SuccessSnapshotHook(Hook):
    """Snapshot the success branch after ``snapshot_iter`` training iterations.

    The paper stops training the success predictor early, while failures are still frequent
    enough for balanced success / failure data; the snapshot predicts success at test time
    while the seg branch trains on. The snapshot and its flag are model buffers/parameters,
    so they are saved in checkpoints and restored on resume.
    """

    priority = "NORMAL"

    def __init__(self, snapshot_iter: int):
        if (
            isinstance(snapshot_iter, bool)
            or not isinstance(snapshot_iter, numbers.Integral)
            or snapshot_iter < 1
        ):  # 5.5 would never equal an iteration: no snapshot
            raise ValueError(
                f"SuccessSnapshotHook.snapshot_iter must be an integer >= 1, got {snapshot_iter!r}"
            )
        snapshot_iter = int(snapshot_iter)
        self.snapshot_iter = snapshot_iter

    def before_train(self, runner):
        success_head_of(runner.model)  # fail before training, not at the snapshot
        if runner.max_iters < self.snapshot_iter:
            raise ValueError(
                f"SuccessSnapshotHook.snapshot_iter={self.snapshot_iter} is after "
                f"the last iteration ({runner.max_iters})"
            )

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.snapshot_iter:
            success_head_of(runner.model).take_success_snapshot()
            runner.logger.info(f"success branch snapshot taken at iteration {self.snapshot_iter}")
