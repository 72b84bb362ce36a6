#!/usr/bin/env python3
"""The notebook's LeNet trained with PyTorch on CPU: the reference the dense
engine is measured against.

Same network (conv 3->6 5x5, ReLU, maxpool 2, conv 6->16 5x5, ReLU, maxpool 2,
fc 400-120-84-10), same loss (cross-entropy), same optimiser (SGD, lr 0.001,
momentum 0.9), same data (the CIFAR-10 binary batches, normalised with mean
0.5 and std 0.5, shuffled each epoch, no augmentation) and the same timing
rule as `cargo run --release --example cifar`: the training clock runs only
around each step (forward, loss, backward, optimiser step), not around batch
preparation; the evaluation clock runs around the whole test pass (batches
of 250, as the engine's evaluation, no gradient).

    python3 benches/pytorch/lenet_train.py DATA_DIR --batch-size 4 --limit-train 20000

DATA_DIR is a folder holding data_batch_1.bin .. data_batch_5.bin and
test_batch.bin (e.g. cifar-10-batches-bin, or the bundled sample
datasets/cifar10-sample/cifar-10-batches-bin). Prints one line per epoch and a
summary line "training: N images/s ... evaluation: M images/s".
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RECORD = 1 + 3 * 32 * 32
EVAL_BATCH = 250  # the engine's EVAL_BATCH_SIZE


def read_batches(directory, names):
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from CIFAR-10 batch files."""
    images, labels = [], []
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % RECORD != 0:
            sys.exit(f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte records")
        raw = raw.reshape(-1, RECORD)
        labels.append(raw[:, 0].astype(np.int64))
        images.append(raw[:, 1:].reshape(-1, 3, 32, 32))
    if not images:
        sys.exit(f"no CIFAR-10 batch files ({', '.join(names)}) in {directory}")
    return np.concatenate(images), np.concatenate(labels)


def to_tensor(images):
    """uint8 -> float32 normalised by mean 0.5, std 0.5 (the engine's default)."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return (x - 0.5) / 0.5


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="folder with the CIFAR-10 binary batch files")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N test images")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    train_images, train_labels = read_batches(args.data, train_names)
    test_images, test_labels = read_batches(args.data, ["test_batch.bin"])
    if args.limit_train is not None:
        train_images, train_labels = train_images[: args.limit_train], train_labels[: args.limit_train]
    if args.limit_test is not None:
        test_images, test_labels = test_images[: args.limit_test], test_labels[: args.limit_test]
    x_train, y_train = to_tensor(train_images), torch.from_numpy(train_labels)
    x_test, y_test = to_tensor(test_images), torch.from_numpy(test_labels)

    net = LeNet()
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    n, b = len(x_train), args.batch_size
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{n} training and {len(x_test)} test images; batch {b}"
    )

    train_seconds, train_images_done = 0.0, 0
    eval_seconds, eval_images_done = 0.0, 0
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(n)
        running, steps = 0.0, 0
        for start in range(0, n, b):
            idx = order[start : start + b]
            x, y = x_train[idx], y_train[idx]
            t = time.perf_counter()
            opt.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            opt.step()
            train_seconds += time.perf_counter() - t
            train_images_done += len(idx)
            running += loss.item()
            steps += 1

        net.eval()
        correct = 0
        t = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(x_test), EVAL_BATCH):
                logits = net(x_test[start : start + EVAL_BATCH])
                correct += (logits.argmax(1) == y_test[start : start + EVAL_BATCH]).sum().item()
        eval_seconds += time.perf_counter() - t
        eval_images_done += len(x_test)
        print(
            f"epoch {epoch + 1}: mean loss {running / max(steps, 1):.4f}, "
            f"test accuracy {100.0 * correct / max(len(x_test), 1):.2f}%"
        )

    print(
        f"training: {train_images_done / train_seconds:.0f} images/s "
        f"({train_images_done} images in {train_seconds:.1f} s); "
        f"evaluation: {eval_images_done / max(eval_seconds, 1e-9):.0f} images/s"
    )


if __name__ == "__main__":
    main()
