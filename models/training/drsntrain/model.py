"""The 1-D Deep Residual Shrinkage Network (Zhao et al., IEEE TII 2020) and its baselines.

One class builds all three architectures, so they differ only in the shrinkage:
- "cw": DRSN-CW, one learned threshold per channel and sample;
- "cs": DRSN-CS, one threshold per sample shared by all channels;
- "none": the plain pre-activation ResNet (the same network, shrinkage removed).

The network standardises each window itself (zero mean, unit variance), so the served
model takes raw samples and the server applies no preprocessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

SHRINKAGE_MODES = ("cw", "cs", "none")
ARCH_NAMES = {"cw": "DRSN-CW", "cs": "DRSN-CS", "none": "ResNet"}


@dataclass(frozen=True)
class ModelConfig:
    shrinkage: str = "cw"
    classes: int = 10
    window: int = 2048
    stem_channels: int = 4
    # First layer: a wide kernel with a large stride (as WDCNN, Zhang et al., Sensors 2017) filters out
    # high-frequency noise and shortens every later layer; (3, 2) is the paper's stem.
    stem_kernel: int = 3
    stem_stride: int = 2
    # (channels, units) per stage; the first unit of each stage has stride 2.
    stages: tuple[tuple[int, int], ...] = field(default=((4, 4), (8, 4), (16, 4)))
    standardize_eps: float = 1e-8

    def __post_init__(self):
        if self.shrinkage not in SHRINKAGE_MODES:
            raise ValueError(f"shrinkage must be one of {SHRINKAGE_MODES}, not {self.shrinkage!r}")
        if self.stem_kernel < 1 or self.stem_stride < 1:
            raise ValueError("stem_kernel and stem_stride must be at least 1")

    @property
    def units(self) -> int:
        return sum(n for _, n in self.stages)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["stages"] = tuple(tuple(s) for s in d["stages"])
        return cls(**d)

    def feature_length(self) -> int:
        """Length of the feature map after the stem and every strided unit."""
        n = (self.window + 2 * self.stem_padding - self.stem_kernel) // self.stem_stride + 1
        for _ in self.stages:
            n = (n + 1) // 2
        return n

    @property
    def stem_padding(self) -> int:
        return (self.stem_kernel - 1) // 2


def soft_threshold(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """sign(x) * max(|x| - tau, 0), with tau broadcast against x.

    Written with Sign/Abs/Relu so that it exports to ONNX with a per-sample tensor
    threshold (ONNX Shrink takes a fixed one, and ONNX Runtime refuses Clip with a tensor).
    """
    return torch.sign(x) * torch.relu(torch.abs(x) - tau)


def conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv1d:
    # kernel 3, padding 1: "same" length at stride 1, ceil(L / 2) at stride 2.
    return nn.Conv1d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=True)


def shortcut(x: torch.Tensor, c_out: int, stride: int) -> torch.Tensor:
    """Identity shortcut without projection: subsample, then zero-pad new channels.

    New channels go half in front, half behind (the odd one behind).
    """
    if stride > 1:
        x = x[:, :, ::stride]
    grow = c_out - x.shape[1]
    if grow > 0:
        front = grow // 2
        x = nn.functional.pad(x, (0, 0, front, grow - front))
    return x


class Thresholds(nn.Module):
    """Attention sub-network: per-sample thresholds from the features themselves."""

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.mode = mode
        self.fc1 = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm1d(channels)
        self.fc2 = nn.Linear(channels, channels if mode == "cw" else 1)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tau of shape (N, C or 1, 1), alpha of shape (N, C or 1))."""
        a = r.abs().mean(dim=2)  # (N, C)
        alpha = torch.sigmoid(self.fc2(torch.relu(self.bn(self.fc1(a)))))
        scale = a if self.mode == "cw" else a.mean(dim=1, keepdim=True)
        return (alpha * scale).unsqueeze(2), alpha


class RSBU(nn.Module):
    """Residual shrinkage building unit (pre-activation), or a plain residual unit."""

    def __init__(self, c_in: int, c_out: int, stride: int, mode: str):
        super().__init__()
        self.c_out, self.stride = c_out, stride
        self.bn1 = nn.BatchNorm1d(c_in)
        self.conv1 = conv3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.conv2 = conv3(c_out, c_out)
        self.thresholds = Thresholds(c_out, mode) if mode != "none" else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        r = self.conv1(torch.relu(self.bn1(x)))
        r = self.conv2(torch.relu(self.bn2(r)))
        alpha = None
        if self.thresholds is not None:
            tau, alpha = self.thresholds(r)
            r = soft_threshold(r, tau)
        return r + shortcut(x, self.c_out, self.stride), alpha


class DRSN(nn.Module):
    """Stem conv, three stages of units, then BN-ReLU-GAP-FC.

    forward returns (logits, shrinkage): shrinkage is (N, units), the mean alpha of each
    unit per window, or None for the plain ResNet.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        self.stem = nn.Conv1d(
            1,
            config.stem_channels,
            kernel_size=config.stem_kernel,
            stride=config.stem_stride,
            padding=config.stem_padding,
            bias=True,
        )
        units = []
        c = config.stem_channels
        for channels, count in config.stages:
            for i in range(count):
                units.append(RSBU(c, channels, 2 if i == 0 else 1, config.shrinkage))
                c = channels
        self.units = nn.ModuleList(units)
        self.bn = nn.BatchNorm1d(c)
        self.fc = nn.Linear(c, config.classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # He init
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features, shrinkage = self.embed(x)
        return self.fc(features), shrinkage

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, shrinkage): the pooled features the classifier reads (N, channels), and the shrinkage."""
        mean = x.mean(dim=2, keepdim=True)
        var = (x - mean).pow(2).mean(dim=2, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.config.standardize_eps)
        x = self.stem(x)
        alphas = []
        for unit in self.units:
            x, alpha = unit(x)
            if alpha is not None:
                alphas.append(alpha.mean(dim=1))
        features = torch.relu(self.bn(x)).mean(dim=2)
        return features, (torch.stack(alphas, dim=1) if alphas else None)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
