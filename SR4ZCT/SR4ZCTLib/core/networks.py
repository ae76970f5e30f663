"""2D image-to-image networks: the paper's MS-D network and a small residual CNN for CPUs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _DenseDilatedStack(torch.autograd.Function):
    """All MS-D layers in one autograd node, storing only the channel maps themselves.

    Each layer reads the concatenation of every earlier channel. A naive version copies that
    growing concatenation at every layer (memory quadratic in depth); here the channels live in
    one preallocated buffer and each layer's convolution is recomputed in the backward pass,
    so memory stays linear in depth (buffer + its gradient).
    """

    @staticmethod
    def forward(ctx, image, dilations, *parameters):
        batch, channels, height, width = image.shape
        buffer = image.new_empty(batch, channels + len(dilations), height, width)
        buffer[:, :channels] = image
        for index, dilation in enumerate(dilations):
            weight, bias = parameters[2 * index], parameters[2 * index + 1]
            features = _reflect_conv(buffer[:, : channels + index], weight, bias, dilation)
            buffer[:, channels + index : channels + index + 1] = F.relu(features)
        ctx.dilations = tuple(dilations)
        ctx.channels = channels
        ctx.save_for_backward(buffer, *parameters)
        return buffer

    @staticmethod
    def backward(ctx, grad_buffer):
        buffer, *parameters = ctx.saved_tensors
        channels = ctx.channels
        grad = grad_buffer.clone()
        grad_parameters = [None] * len(parameters)
        for index in reversed(range(len(ctx.dilations))):
            layer = channels + index
            grad_features = grad[:, layer : layer + 1] * (buffer[:, layer : layer + 1] > 0)
            with torch.enable_grad():
                inputs = buffer[:, :layer].detach().requires_grad_(True)
                weight = parameters[2 * index].detach().requires_grad_(True)
                bias = parameters[2 * index + 1].detach().requires_grad_(True)
                features = _reflect_conv(inputs, weight, bias, ctx.dilations[index])
                grad_inputs, grad_weight, grad_bias = torch.autograd.grad(
                    features, (inputs, weight, bias), grad_features
                )
            grad[:, :layer] += grad_inputs
            grad_parameters[2 * index], grad_parameters[2 * index + 1] = grad_weight, grad_bias
        return (grad[:, :channels], None, *grad_parameters)


def _reflect_conv(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    padded = F.pad(inputs, (dilation, dilation, dilation, dilation), mode="reflect")
    return F.conv2d(padded, weight.to(padded.dtype), bias.to(padded.dtype), dilation=dilation)


class MSDNet(nn.Module):
    """Mixed-scale dense network (Pelt & Sethian 2018) as in the SR4ZCT paper.

    depth layers of `width` 3x3 dilated convolutions (width 1 in the paper), dilations cycling
    1..max_dilation, each layer fed every earlier channel, reflection padding, and a final 1x1
    convolution over the input and all feature channels.
    """

    def __init__(self, depth: int = 100, width: int = 1, max_dilation: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        if width != 1:
            raise ValueError("this memory-efficient MS-D implementation uses width 1, as the paper does")
        self.dilations = [1 + (index % max_dilation) for index in range(depth)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for index in range(depth):
            fan_in = (in_channels + index) * 9
            self.weights.append(nn.Parameter(torch.randn(1, in_channels + index, 3, 3) * (2.0 / fan_in) ** 0.5))
            self.biases.append(nn.Parameter(torch.zeros(1)))
        self.final = nn.Conv2d(in_channels + depth, 1, kernel_size=1)
        nn.init.zeros_(self.final.weight)
        with torch.no_grad():
            self.final.weight[0, 0] = 1.0  # start as the identity on the input channel
        nn.init.zeros_(self.final.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        parameters = [p for pair in zip(self.weights, self.biases) for p in pair]
        features = _DenseDilatedStack.apply(image, self.dilations, *parameters)
        with torch.autocast(features.device.type, enabled=False):  # the output layer in float32 under fp16 autocast
            return self.final(features.to(self.final.weight.dtype))


class ResidualCNN(nn.Module):
    """Plain 3x3 CNN predicting a correction added to its input: fast to train on a CPU."""

    def __init__(self, depth: int = 8, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(depth - 1):
            layers += [nn.Conv2d(channels, width, 3, padding=1, padding_mode="reflect"), nn.ReLU(inplace=True)]
            channels = width
        last = nn.Conv2d(channels, 1, 3, padding=1, padding_mode="reflect")
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image + correction; under autocast the last layer and the residual add stay in the input's float32."""
        features = self.body[:-1](image)
        with torch.autocast(image.device.type, enabled=False):
            return image + self.body[-1](features.to(image.dtype))


ARCHITECTURES = {"msd": MSDNet, "cnn": ResidualCNN}


def build_network(architecture: str, options: dict | None = None) -> nn.Module:
    """Make a network by name ("msd" or "cnn") with its keyword options."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](**(options or {}))


def receptive_radius(network: nn.Module) -> int:
    """How many pixels of context one output pixel sees on each side (for tiling and padding)."""
    if isinstance(network, MSDNet):
        return sum(network.dilations)
    return sum(1 for m in network.modules() if isinstance(m, nn.Conv2d))


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())

