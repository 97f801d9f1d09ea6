"""Per-pixel post-hoc calibrators of segmentation logits beyond one global temperature
(framework-free; a segmentor holds them as buffers, see ``conf_plugins.mmseg.segmentor``).

* :class:`SelectiveScaling` — Wang, Gong & Wang, CVPR 2023, "On Calibrating Semantic
  Segmentation Models: Analyses and an Algorithm": a binary correctness classifier on each
  pixel's class probabilities picks the pixels it expects to be wrong; those get one
  temperature, the others another: z / T_wrong where q(z) < τ, else z / T_right (the paper
  fixes T_right = 1 and a large T_wrong; here both, and the threshold τ, minimise the NLL
  on the held-out pixels, which contains the paper's choice). The classifier is a logistic
  regression on (logit of the max softmax, top-2 margin of the log-probabilities,
  normalised entropy), or any given probability of being right (a success branch's).
* :class:`LocalTemperatureScaling` — Ding et al., ICCV 2021, "Local Temperature Scaling for
  Probability Calibration": a per-pixel temperature T(x) = softplus(f(z)(x)) + T_FLOOR
  predicted by a small convolutional net f from the logits, and with ``image_channels`` > 0
  also from the (normalised) image, as in the paper (the segmentor then carries the image
  beside its logits), trained by the NLL of softmax(z / T(x)) on held-out images. Its last
  layer starts at zero with the bias of the global temperature, so training starts from
  temperature scaling. With ``pooled=True`` the net's output is averaged over the image
  before the softplus: one temperature per image, predicted from that image's own logits (a
  sample-dependent temperature, Joy et al., AAAI 2023, "Sample-dependent Adaptive
  Temperature Scaling for Improved Calibration", taken per image), so a whole image that
  looks unlike calib can be softened while every pixel keeps its ranking within it.

Both divide the logits by a positive per-pixel temperature: the predicted class, hence mIoU,
is unchanged.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .entropy import normalized_entropy
from .logistic import fit_logistic, logit
from .temperature import TemperatureScaler

SELECTOR_FEATURES = 3  # logit(max softmax), top-2 log-prob margin, normalised entropy (+ bias)
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # τ searched on the held-out pixels
T_FLOOR = 0.05  # lowest local temperature
LEARNING_RATE = {False: 0.01, True: 0.002}  # Adam step, by ``pooled``: one output per image
# moves with every pixel's features, and larger first steps kill the ReLUs (measured)


def _check_logits(logits: torch.Tensor, dim: int):
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor")
    if logits.dim() < 2 or logits.shape[dim] < 2:
        raise ValueError(f"logits need at least 2 classes along dim {dim}, got shape {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")


def selector_features(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The classifier's inputs per pixel, (..., SELECTOR_FEATURES + 1) with a bias column:
    logit of the max softmax, margin between the top-2 log-probabilities, normalised entropy."""
    log_probs = logits.double().log_softmax(dim=dim)
    top2 = log_probs.topk(2, dim=dim).values
    top1, second = top2.select(dim, 0), top2.select(dim, 1)
    columns = [logit(top1.exp()), top1 - second, normalized_entropy(log_probs.exp(), dim=dim)]
    return torch.stack([*columns, torch.ones_like(top1)], dim=-1)


def _nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.cross_entropy(logits, labels, reduction="sum"))


class SelectiveScaling(nn.Module):
    """Selective Scaling (see the module docstring). Buffers: ``selector_coef`` (the
    logistic classifier), ``threshold`` τ, ``temperatures`` (T_right, T_wrong), ``fitted``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("selector_coef", torch.zeros(SELECTOR_FEATURES + 1, dtype=torch.float64))
        self.register_buffer("threshold", torch.tensor(0.5, dtype=torch.float64))
        self.register_buffer("temperatures", torch.ones(2, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))

    def right_probability(self, logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The own classifier's probability that each pixel's predicted class is right."""
        features = selector_features(logits, dim).to(self.selector_coef)
        return torch.sigmoid(features @ self.selector_coef)

    def temperature_map(self, logits: torch.Tensor, right_probability=None, dim: int = 1) -> torch.Tensor:
        """T per pixel: T_wrong where the probability of being right is below τ, else T_right
        (shape of ``logits`` without ``dim``)."""
        if not bool(self.fitted):
            raise RuntimeError("Selective Scaling is not fitted")
        q = self.right_probability(logits, dim) if right_probability is None else right_probability
        t_right, t_wrong = self.temperatures.tolist()
        wrong = q.to(logits.device) < float(self.threshold)
        return torch.where(wrong, t_wrong, t_right).to(logits.dtype)

    def forward(self, logits: torch.Tensor, right_probability=None, dim: int = 1) -> torch.Tensor:
        """Calibrated logits z / T(x); ``right_probability`` replaces the own classifier."""
        return logits / self.temperature_map(logits, right_probability, dim).unsqueeze(dim)

    @torch.no_grad()
    def fit(self, logits, labels, right_probability=None) -> dict:
        """Fit on held-out pixels: ``logits`` (N, C), ``labels`` (N,) in [0, C),
        ``right_probability`` (N,) optional. The classifier is fitted to "argmax == label";
        then for each τ in THRESHOLDS a temperature per side (NLL, convex), keeping the τ of
        least total NLL. Returns a summary."""
        logits, labels = torch.as_tensor(logits), torch.as_tensor(labels).long()
        _check_logits(logits, 1)
        if logits.dim() != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
            raise ValueError(
                "need logits (N, C) and labels (N,), N > 0, "
                f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f"labels must be in [0, {logits.shape[1]})")
        right = (logits.argmax(1) == labels).double()
        if right_probability is None:
            self.selector_coef.copy_(fit_logistic(selector_features(logits), right))
            q = self.right_probability(logits)
        else:
            q = torch.as_tensor(right_probability).double().reshape(-1)
            if q.shape != labels.shape or not torch.isfinite(q).all():
                raise ValueError("right_probability must be finite, one value per pixel")
        z = logits.double()
        best = None
        for tau in THRESHOLDS:
            wrong = q < tau
            temps, nll = [], 0.0
            for side in (~wrong, wrong):
                if side.sum() < 2:
                    temps.append(1.0)
                    nll += _nll(z[side], labels[side]) if side.any() else 0.0
                    continue
                t = TemperatureScaler().fit(z[side], labels[side]).temperature
                temps.append(t)
                nll += _nll(z[side] / t, labels[side])
            if best is None or nll < best[0] - 1e-9:
                best = (nll, tau, temps, float(wrong.double().mean()))
        nll, tau, temps, wrong_share = best
        self.threshold.fill_(tau)
        self.temperatures.copy_(torch.tensor(temps, dtype=torch.float64))
        self.fitted.fill_(True)
        return {
            "threshold": tau,
            "temperature_right": temps[0],
            "temperature_wrong": temps[1],
            "share_predicted_wrong": wrong_share,
            "nll": nll / len(labels),
            "pixels": len(labels),
            "selector": "own classifier" if right_probability is None else "given",
        }


class LocalTemperatureScaling(nn.Module):
    """Local temperature scaling (see the module docstring): f = conv3×3(C + image_channels →
    hidden) → ReLU → conv3×3(hidden→1) on the logits minus their per-pixel max, beside the
    image's channels when ``image_channels`` > 0; ``pooled``: averaged over the image (one
    temperature per image)."""

    def __init__(self, num_classes: int, hidden: int = 16, image_channels: int = 0, pooled: bool = False):
        super().__init__()
        if num_classes < 2 or hidden < 1 or image_channels < 0:
            raise ValueError(
                "need num_classes >= 2, hidden >= 1, image_channels >= 0, "
                f"got {num_classes}, {hidden}, {image_channels}"
            )
        self.num_classes, self.image_channels, self.pooled = num_classes, image_channels, pooled
        self.net = nn.Sequential(
            nn.Conv2d(num_classes + image_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )
        self.net.requires_grad_(False)  # fitted by fit(), never by the segmentor's training
        self.register_buffer("fitted", torch.tensor(False))

    def net_input(self, logits: torch.Tensor, image=None) -> torch.Tensor:
        """(N, C + image_channels, H, W): logits (N, C, H, W) minus their per-pixel max, then
        the image (N, image_channels, H, W) when this net reads one."""
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"need logits (N, {self.num_classes}, H, W) or (C, H, W), got {tuple(logits.shape)}"
            )
        x = logits.float() - logits.float().amax(dim=1, keepdim=True)
        if not self.image_channels:
            if image is not None:
                raise ValueError("this local temperature scaling reads no image (image_channels=0)")
            return x
        expected = (x.shape[0], self.image_channels, *x.shape[2:])
        if image is None or tuple(image.shape) != expected:
            raise ValueError(
                f"this local temperature scaling reads the image: need it {expected}, "
                f"got {None if image is None else tuple(image.shape)}"
            )
        return torch.cat([x, image.to(x)], dim=1)

    def _temperature(self, net_input: torch.Tensor) -> torch.Tensor:
        out = self.net(net_input)
        if self.pooled:
            out = out.mean(dim=(2, 3), keepdim=True)
        return F.softplus(out) + T_FLOOR

    def temperature_map(self, logits: torch.Tensor, image=None) -> torch.Tensor:
        """T(x) > T_FLOOR for logits (N, C, H, W) or (C, H, W) (the image likewise batched or
        not); shape (N, 1, H, W) / (1, H, W), or (N, 1, 1, 1) / (1, 1, 1) when pooled."""
        single = logits.dim() == 3
        if single:
            logits, image = logits[None], None if image is None else image[None]
        t = self._temperature(self.net_input(logits, image))
        return t[0] if single else t

    def forward(self, logits: torch.Tensor, image=None) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("local temperature scaling is not fitted")
        dim = 0 if logits.dim() == 3 else 1
        t = self.temperature_map(logits, image).to(logits.dtype)
        return logits / t.expand_as(logits.narrow(dim, 0, 1))

    def fit(self, images, ignore_index=255, iters: int = 200, lr=None, seed: int = 0) -> dict:
        """Train on held-out ``images``: a list of (logits (C, H, W), labels (H, W)) pairs, or
        (logits, labels, image (image_channels, H, W)) when the net reads the image (any
        sizes). Full batch, Adam, mean NLL over the labelled pixels; starts at the global
        temperature of those pixels; ``lr`` defaults to LEARNING_RATE. Returns a summary."""
        pairs = []
        for z, y, *image in images:
            _check_logits(z, 0)
            if z.dim() != 3 or y.shape != z.shape[1:]:
                raise ValueError(
                    f"need logits (C, H, W) and labels (H, W), got {tuple(z.shape)}, {tuple(y.shape)}"
                )
            x = self.net_input(z[None], image[0][None] if image else None)
            if (y != ignore_index).any():
                pairs.append((z.float(), y.long(), x))
        if not pairs:
            raise ValueError(f"no labelled pixels to fit on (every pixel is ignore_index={ignore_index})")
        global_t = (
            TemperatureScaler()
            .fit(
                torch.cat([z.flatten(1).T for z, _, _ in pairs]),
                torch.cat([y.flatten() for _, y, _ in pairs]),
                ignore_index,
            )
            .temperature
        )
        torch.manual_seed(seed)
        for module in self.net:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        last = self.net[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(math.log(math.expm1(max(global_t - T_FLOOR, 1e-3))))  # softplus⁻¹
        self.net.requires_grad_(True)
        optimizer = torch.optim.Adam(
            self.net.parameters(), lr=LEARNING_RATE[self.pooled] if lr is None else lr
        )
        pixels = sum(int((y != ignore_index).sum()) for _, y, _ in pairs)

        def mean_nll():
            total = 0.0
            for z, y, x in pairs:
                t = self._temperature(x)
                loss = F.cross_entropy((z[None] / t), y[None], ignore_index=ignore_index, reduction="sum")
                total = total + loss
            return total / pixels

        try:
            with torch.no_grad():
                start = float(mean_nll())
            for _ in range(iters):
                loss = mean_nll()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                end = float(mean_nll())
        finally:
            self.net.requires_grad_(False)
        self.fitted.fill_(True)
        return {
            "global_temperature": global_t,
            "nll_start": start,
            "nll": end,
            "pixels": pixels,
            "images": len(pairs),
            "iters": iters,
        }


PIXEL_CALIBRATORS = ("selective_scaling", "local_temperature", "local_temperature_image", "image_temperature")
IMAGE_CHANNELS = 3  # what 'local_temperature_image' reads beside the logits


def build_pixel_calibrator(name: str, num_classes: int) -> nn.Module:
    if name == "selective_scaling":
        return SelectiveScaling()
    if name == "local_temperature":
        return LocalTemperatureScaling(num_classes)
    if name == "local_temperature_image":
        return LocalTemperatureScaling(num_classes, image_channels=IMAGE_CHANNELS)
    if name == "image_temperature":
        return LocalTemperatureScaling(num_classes, pooled=True)
    raise ValueError(f"pixel calibrator must be one of {PIXEL_CALIBRATORS}, got {name!r}")


__all__ = [
    "LocalTemperatureScaling",
    "PIXEL_CALIBRATORS",
    "SelectiveScaling",
    "build_pixel_calibrator",
    "selector_features",
]
