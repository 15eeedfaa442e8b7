"""Small PyTorch definitions of the architectures deployment engineers meet most.

ResNet-18 and MobileNetV2 follow torchvision's definitions layer for layer (so published
MAC and parameter counts apply); the others are compact stand-ins with the same op mix as
their real counterparts (RepVGG training-time blocks, a transformer encoder, a YOLO-style
anchor-free detector, a UNet-ish segmenter, a SimpleBaseline-style heatmap pose head).
Weights are random (seeded) — BatchNorm statistics included, so folding is not trivial.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU) else act())
    return nn.Sequential(*layers)


# --- ResNet-18 (torchvision layout) -------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- MobileNetV2 (torchvision layout, width 1.0) ------------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --- RepVGG (training-time multi-branch blocks) -------------------------------------------------


class RepVGGBlock(nn.Module):
    """3x3 conv+BN  +  1x1 conv+BN  +  identity BN (when shapes allow), summed, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dense = conv_bn(cin, cout, 3, stride, act=None)
        self.one = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x) + self.one(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.relu(y)


class RepVGG(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        spec = ((3, 16, 2), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1))
        self.stages = nn.Sequential(*(RepVGGBlock(i, o, s) for i, o, s in spec))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean((2, 3)))


# --- Tiny transformer encoder -------------------------------------------------------------------


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class TinyTransformer(nn.Module):
    def __init__(self, d: int = 64, heads: int = 4, layers: int = 2, ff: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(32, d)
        self.layers = nn.Sequential(*(EncoderLayer(d, heads, ff) for _ in range(layers)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.layers(self.inp(x))).mean(1))


# --- YOLO-style anchor-free detector --------------------------------------------------------------


class TinyYolo(nn.Module):
    """Backbone with strides 8/16/32, an FPN-style top-down neck (Resize + Concat), and a
    decoupled head whose output is [N, 4 + classes, anchors] like YOLOv8's."""

    def __init__(self, classes: int = 8) -> None:
        super().__init__()
        silu = nn.SiLU
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2, act=silu), conv_bn(16, 32, 3, 2, act=silu), conv_bn(32, 32, 3, 2, act=silu))
        self.c4 = conv_bn(32, 64, 3, 2, act=silu)
        self.c5 = conv_bn(64, 128, 3, 2, act=silu)
        self.lat5 = conv_bn(128, 64, 1, act=silu)
        self.fuse4 = conv_bn(128, 64, 3, act=silu)
        self.lat4 = conv_bn(64, 32, 1, act=silu)
        self.fuse3 = conv_bn(64, 32, 3, act=silu)
        self.heads = nn.ModuleList(nn.Conv2d(c, 4 + classes, 1) for c in (32, 64, 64))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.stem(x)
        p4 = self.c4(p3)
        p5 = self.lat5(self.c5(p4))
        n4 = self.fuse4(torch.cat([self.up(p5), p4], 1))
        n3 = self.fuse3(torch.cat([self.up(self.lat4(n4)), p3], 1))
        outs = [h(f).flatten(2) for h, f in zip(self.heads, (n3, n4, p5), strict=True)]
        y = torch.cat(outs, 2)
        return torch.cat([y[:, :4], torch.sigmoid(y[:, 4:])], 1)


# --- UNet-ish segmenter ----------------------------------------------------------------------------


class TinyUNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.d1 = nn.Sequential(conv_bn(3, 16, 3), conv_bn(16, 16, 3))
        self.d2 = nn.Sequential(nn.MaxPool2d(2), conv_bn(16, 32, 3), conv_bn(32, 32, 3))
        self.d3 = nn.Sequential(nn.MaxPool2d(2), conv_bn(32, 64, 3))
        self.u2 = nn.ConvTranspose2d(64, 32, 2, 2)
        self.f2 = conv_bn(64, 32, 3)
        self.u1 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.f1 = conv_bn(32, 16, 3)
        self.out = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.d1(x)
        b = self.d2(a)
        c = self.d3(b)
        b2 = self.f2(torch.cat([self.u2(c), b], 1))
        return self.out(self.f1(torch.cat([self.u1(b2), a], 1)))


# --- SimpleBaseline-style heatmap pose head --------------------------------------------------------


class TinyPose(nn.Module):
    def __init__(self, keypoints: int = 17) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 32, 3, 2), conv_bn(32, 64, 3, 2), conv_bn(64, 128, 3, 2), conv_bn(128, 128, 3, 2))
        deconv: list[nn.Module] = []
        cin = 128
        for _ in range(2):
            deconv += [nn.ConvTranspose2d(cin, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
            cin = 64
        self.deconv = nn.Sequential(*deconv)
        self.final = nn.Conv2d(64, keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconv(self.backbone(x)))
