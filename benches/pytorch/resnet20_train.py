#!/usr/bin/env python3
"""He et al.'s CIFAR ResNet-20 trained with PyTorch on CPU: the reference the
engine's dense ResNet is measured against, for accuracy and for speed.

Same network as `--model resnet20`: conv 3->16 3x3 (no bias) + BN + ReLU,
three stages of three basic blocks (16, 32, 64 channels; the first block of
stages 2 and 3 has stride 2 and the parameter-free "option A" shortcut:
x[:, :, ::2, ::2] zero-padded by C/4 channels on each side), global average
pool, fc 64->10; Kaiming-normal weights (fan_in, gain sqrt 2), BN gamma 1,
beta 0. 269,722 parameters.

Same recipe as `--recipe resnet`: SGD with momentum 0.9, weight decay 5e-4 on
every parameter, lr 0.1 decayed by cosine per step to 0
(lr * (1 + cos(pi * step / total)) / 2 at 0-based step), batch 128 with the
last partial batch kept, 30 epochs; random crop (4 pixels of zero padding)
and horizontal flip; normalised by the CIFAR-10 channel means and
deviations. Evaluation in eval mode (BN by its running statistics) on the
whole test set after each epoch.

Same timing rule as `cargo run --release --example cifar`: the training clock
runs only around each step (forward, loss, backward, optimiser step), not
around batch preparation; the evaluation clock runs around the whole test
pass (batches of 32 as the engine's ResNet evaluation, --eval-batch to
change it; no gradient).

    python3 benches/pytorch/resnet20_train.py DATA_DIR --seed 0
    python3 benches/pytorch/resnet20_train.py DATA_DIR --epochs 1 --limit-train 12800 --threads 2

DATA_DIR holds data_batch_1.bin .. data_batch_5.bin and test_batch.bin.
Prints one line per epoch and a summary line "training: N images/s ...
evaluation: M images/s", and with --metrics FILE writes the per-epoch
accuracies as JSON lines, and a summary line when the last epoch is done. With --checkpoint FILE it saves its whole state
after every epoch and, started again with the same command, continues from
there (a 30-epoch run takes hours on two cores).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RECORD = 1 + 3 * 32 * 32
MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(1, 3, 1, 1)


def read_batches(directory, names):
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from CIFAR-10 batch files."""
    images, labels = [], []
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            sys.exit(f"{path} is missing")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % RECORD != 0:
            sys.exit(f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte records")
        raw = raw.reshape(-1, RECORD)
        labels.append(raw[:, 0].astype(np.int64))
        images.append(raw[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def normalise(images):
    """uint8 (N, 3, 32, 32) -> float32 by the CIFAR-10 channel statistics."""
    return torch.from_numpy((images.astype(np.float32) / 255.0 - MEAN) / STD)


def augment(images, rng):
    """Random 32x32 crops of the images zero-padded by 4, and flips."""
    n = len(images)
    padded = np.zeros((n, 3, 40, 40), dtype=np.uint8)
    padded[:, :, 4:36, 4:36] = images
    out = np.empty_like(images)
    dy = rng.integers(0, 9, n)
    dx = rng.integers(0, 9, n)
    flip = rng.integers(0, 2, n).astype(bool)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        out[i] = crop[:, :, ::-1] if flip[i] else crop
    return out


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.stride != 1 or self.pad != 0:
            x = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + x)


class ResNet(nn.Module):
    def __init__(self, depth=20, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="folder with the CIFAR-10 binary batch files")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=32, help="images per evaluation batch (the engine's ResNet: 32)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N test images")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics", default=None, help="append per-epoch accuracy here as JSON lines")
    p.add_argument("--checkpoint", default=None, help="save after each epoch here; resume from it if present")
    args = p.parse_args()
    if args.eval_batch < 1:
        p.error("--eval-batch must be at least 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_images, train_labels = read_batches(args.data, [f"data_batch_{i}.bin" for i in range(1, 6)])
    test_images, test_labels = read_batches(args.data, ["test_batch.bin"])
    if args.limit_train is not None:
        train_images, train_labels = train_images[: args.limit_train], train_labels[: args.limit_train]
    if args.limit_test is not None:
        test_images, test_labels = test_images[: args.limit_test], test_labels[: args.limit_test]
    x_test, y_test = normalise(test_images), torch.from_numpy(test_labels)

    net = ResNet(args.depth)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    n, b = len(train_images), args.batch_size
    steps_per_epoch = math.ceil(n / b)
    total = steps_per_epoch * args.epochs
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; resnet{args.depth}, "
        f"{sum(q.numel() for q in net.parameters())} parameters; "
        f"{n} training and {len(x_test)} test images; batch {b}"
    )
    out = open(args.metrics, "a") if args.metrics else None

    train_seconds, train_done, eval_seconds, eval_done, step = 0.0, 0, 0.0, 0, 0
    first_epoch = 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint, weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["numpy_rng"]
        first_epoch, step = state["epoch"], state["step"]
        train_seconds, train_done, eval_seconds, eval_done = state["clocks"]
        print(f"resumed from {args.checkpoint} after epoch {first_epoch}")
    for epoch in range(first_epoch, args.epochs):
        net.train()
        order = rng.permutation(n)
        running = 0.0
        for start in range(0, n, b):
            idx = order[start : start + b]
            x = normalise(augment(train_images[idx], rng))
            y = torch.from_numpy(train_labels[idx])
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            t = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            train_seconds += time.perf_counter() - t
            train_done += len(idx)
            running += loss.item()
            step += 1

        net.eval()
        correct = 0
        t = time.perf_counter()
        with torch.no_grad():
            eb = args.eval_batch
            for start in range(0, len(x_test), eb):
                logits = net(x_test[start : start + eb])
                correct += (logits.argmax(1) == y_test[start : start + eb]).sum().item()
        eval_seconds += time.perf_counter() - t
        eval_done += len(x_test)
        acc = correct / max(len(x_test), 1)
        print(
            f"epoch {epoch + 1}: mean loss {running / steps_per_epoch:.4f}, "
            f"test accuracy {100.0 * acc:.2f}%",
            flush=True,
        )
        if out:
            out.write(json.dumps({"type": "epoch", "epoch": epoch + 1, "step": step, "test_accuracy": acc,
                                  "framework": "pytorch", "seed": args.seed}) + "\n")
            out.flush()
        if args.checkpoint:
            state = {
                "model": net.state_dict(), "opt": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": rng.bit_generator.state, "epoch": epoch + 1, "step": step,
                "clocks": (train_seconds, train_done, eval_seconds, eval_done),
            }
            torch.save(state, args.checkpoint + ".tmp")
            os.replace(args.checkpoint + ".tmp", args.checkpoint)

    if out and first_epoch < args.epochs:
        # The end of the run, as the cifar example's metrics end theirs.
        out.write(json.dumps({"type": "summary", "test_accuracy": acc, "framework": "pytorch",
                              "seed": args.seed, "train_seconds": train_seconds,
                              "train_images_per_second": train_done / max(train_seconds, 1e-9)}) + "\n")
        out.flush()
    print(
        f"training: {train_done / train_seconds:.0f} images/s "
        f"({train_done} images in {train_seconds:.1f} s); "
        f"evaluation: {eval_done / max(eval_seconds, 1e-9):.0f} images/s"
    )


if __name__ == "__main__":
    main()
