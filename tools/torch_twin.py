"""A plain PyTorch twin of ppadapt's ViT, for side-by-side CPU step times (a dev tool, not
part of the package; ppadapt does not depend on PyTorch).

The same architecture as ``configs/cpu.yaml`` (or the sizes given): patch embedding by a
strided convolution, a class token, learned position embeddings, pre-norm blocks
(LayerNorm eps 1e-5, multi-head attention with a qkv bias, GELU MLP), a final LayerNorm
and a linear head; AdaptFormer's official branch beside every MLP (down, ReLU, dropout 0.1,
up, scale 0.1, fed by the stream after attention). ``full`` trains everything; ``frozen``
trains the branches and the head only (``requires_grad_(False)`` elsewhere). One step is
forward, cross-entropy, backward and a Momentum SGD step with weight decay on a random
batch, as ``bench.py`` times ``paddle.Model.train_batch``. ``--class-token-only``: the last block
computes the class token's output alone, as ppadapt's ``model.layers: fused`` does in training
(the head reads nothing else), for a like-for-like comparison with that path.

    python tools/torch_twin.py --mode full --steps 10 --threads 2 --json

Prints one JSON line: the median, min and max seconds per step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Branch(nn.Module):
    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.1, scale: float = 0.1) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        self.dropout, self.scale = dropout, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.down(x)), self.dropout, self.training)
        return self.up(h) * self.scale


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, bottleneck: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-5), nn.LayerNorm(dim, eps=1e-5)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.branch = Branch(dim, bottleneck) if bottleneck else None

    def attention(self, x: torch.Tensor, queries: int) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0][:, :, :queries], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, q.shape[2], d))

    def forward(self, x: torch.Tensor, first_tokens: int | None = None) -> torch.Tensor:
        queries = x.shape[1] if first_tokens is None else first_tokens
        x = x[:, :queries] + self.attention(self.norm1(x), queries)
        mlp = self.fc2(F.gelu(self.fc1(self.norm2(x))))
        if self.branch is not None:
            mlp = mlp + self.branch(x)
        return x + mlp


class ViT(nn.Module):
    def __init__(self, img: int, patch: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 bottleneck: int, classes: int, class_token_only: bool = False) -> None:
        super().__init__()
        self.class_token_only = class_token_only
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (img // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, bottleneck) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, 1 if last and self.class_token_only and self.training else None)
        return self.head(self.norm(x)[:, 0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("full", "frozen"), default="full")
    p.add_argument("--img", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--class-token-only", action="store_true",
                   help="the last block computes the class token's output alone while training")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ViT(args.img, args.patch, args.dim, args.depth, args.heads, args.mlp_ratio, args.bottleneck, args.classes,
                args.class_token_only)
    if args.mode == "frozen":
        for name, param in model.named_parameters():
            param.requires_grad_(".branch." in name or name.startswith("head."))
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, args.img, args.img)
    y = torch.randint(0, args.classes, (args.batch,))
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    result = {"mode": args.mode, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
              "trainable": sum(q.numel() for q in params), "torch": torch.__version__, "threads": args.threads}
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
