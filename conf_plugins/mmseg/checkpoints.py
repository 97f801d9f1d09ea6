"""Refuse a checkpoint that lacks weights of the model it is loaded into."""

from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import CheckpointLoader


def missing_weights(model, checkpoint_path: str):
    """Names of ``model``'s weights and buffers that the checkpoint does not hold.

    mmengine's ``load_from`` loads non-strictly: an STL checkpoint under an MTL config would
    evaluate a randomly initialised success branch without complaint. Keys the checkpoint
    has beyond the model (e.g. an auxiliary head the config drops) are allowed.
    """
    model = model.module if is_model_wrapper(model) else model
    checkpoint = CheckpointLoader.load_checkpoint(checkpoint_path, map_location="cpu")
    state = checkpoint.get("state_dict", checkpoint)
    have = {k[len("module.") :] if k.startswith("module.") else k for k in state}
    return sorted(set(model.state_dict()) - have)


def require_complete_checkpoint(model, checkpoint_path: str):
    """ValueError naming the missing weights, if any (see :func:`missing_weights`)."""
    missing = missing_weights(model, checkpoint_path)
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise ValueError(
            f"{checkpoint_path} lacks {len(missing)} weights of the config's model "
            f"({shown}): it was trained for another model (e.g. an STL checkpoint "
            "under an MTL config)"
        )
