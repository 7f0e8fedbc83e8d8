"""Train the tiny dynamic network on synthetic data, annealing the softmax temperature.

Ten classes, each a fixed random 3x16x16 pattern plus Gaussian noise: learnable in under a minute
on a CPU. The temperature follows DynamicConv's schedule (30 -> 1 linearly, here over the
first half of the epochs instead of 10 of 300) and is printed with the loss every epoch.

    python -m dyconv_deploy.samples.train_synthetic --epochs 6
"""

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dyconv_deploy.nn import annealed_temperature, set_temperature
from dyconv_deploy.samples import create_sample

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 16, 16)


@dataclass(frozen=True)
class EpochLog:
    """Mean training loss of one epoch and the temperature it ran at."""

    epoch: int
    temperature: float
    loss: float


def synthetic_batch(prototypes: torch.Tensor, batch_size: int, generator: torch.Generator, noise: float = 0.5):
    """Images ``[B, 3, 16, 16]`` = class prototype + noise, and labels ``[B]``."""
    labels = torch.randint(len(prototypes), (batch_size,), generator=generator)
    images = prototypes[labels] + noise * torch.randn(batch_size, *IMAGE_SHAPE, generator=generator)
    return images, labels


def train(epochs: int = 6, steps_per_epoch: int = 10, batch_size: int = 16, lr: float = 0.05,
          seed: int = 0, verbose: bool = True) -> list[EpochLog]:
    """Train ``sample:tiny_dynamic`` and return one :class:`EpochLog` per epoch."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(NUM_CLASSES, *IMAGE_SHAPE, generator=generator)
    model = create_sample("tiny_dynamic").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    anneal_epochs = max(epochs // 2, 1)
    logs = []
    for epoch in range(epochs):
        temperature = annealed_temperature(epoch, epochs=anneal_epochs)
        set_temperature(model, temperature)
        total = 0.0
        for _ in range(steps_per_epoch):
            images, labels = synthetic_batch(prototypes, batch_size, generator)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        logs.append(EpochLog(epoch, temperature, total / steps_per_epoch))
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}  temperature {temperature:5.1f}  loss {logs[-1].loss:.4f}")
    return logs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    train(args.epochs, args.steps_per_epoch, args.batch_size)


if __name__ == "__main__":
    main()
