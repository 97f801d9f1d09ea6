"""The DDN student's meta-architecture: Faster R-CNN with backbone and RPN frozen."""

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN


@META_ARCH_REGISTRY.register()
class DDNRCNN(GeneralizedRCNN):
    """Identical to ``GeneralizedRCNN`` except that the backbone and the RPN are frozen.

    Their parameters get ``requires_grad=False`` (so no graph is built through them and the
    optimizer never sees them) and they stay in eval mode when the model trains, so the RPN
    yields exactly the teacher's test-time proposals (DDN paper §V.A: "we freeze the RPN").
    Only the ROI heads (box head + predictor) learn.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for module in (self.backbone, self.proposal_generator):
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        self.proposal_generator.eval()
        return self
