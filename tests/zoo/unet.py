"""U-Net (Ronneberger et al. 2015) with padded convs, biases and no batch norm, under the module
names of the widely used PyTorch port (milesial/Pytorch-UNet: inc, down1-4, up1-4, outc)."""

from __future__ import annotations

import torch
from torch import nn

from .common import each, rename


class DoubleConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.double_conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    def __init__(self, n_channels=1, n_classes=2, width=64):
        super().__init__()
        w = [width * 2 ** i for i in range(5)]
        self.inc = DoubleConv(n_channels, w[0])
        self.down1, self.down2, self.down3, self.down4 = (Down(w[i], w[i + 1]) for i in range(4))
        self.up1, self.up2, self.up3, self.up4 = (Up(w[i], w[i - 1]) for i in (4, 3, 2, 1))
        self.outc = nn.Sequential()
        self.outc.conv = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.down4(x4)
        return self.outc(self.up4(self.up3(self.up2(self.up1(x, x4), x3), x2), x1))


def unet(num_classes=2):
    return UNet(1, num_classes)


def _conv(i):
    return f"double_conv.{2 * (int(i) - 1)}"


names = each(rename([
    (r"x1/double_conv1/conv(\d)\.(\w+)", lambda m: f"inc.{_conv(m[1])}.{m[2]}"),
    (r"x(\d)/down1/double_conv1/conv(\d)\.(\w+)",
     lambda m: f"down{int(m[1]) - 1}.maxpool_conv.1.{_conv(m[2])}.{m[3]}"),
    (r"down1/double_conv1/conv(\d)\.(\w+)", lambda m: f"down4.maxpool_conv.1.{_conv(m[1])}.{m[2]}"),
    (r"up(\d)/conv_transpose1\.(\w+)", r"up\1.up.\2"),
    (r"up(\d)/double_conv1/conv(\d)\.(\w+)", lambda m: f"up{m[1]}.conv.{_conv(m[2])}.{m[3]}"),
    (r"conv1\.(\w+)", r"outc.conv.\1"),
]))
