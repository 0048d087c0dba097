"""PyTorch reference for stylefarm's engine, used by the parity tests and the benchmark.

It computes, in plain eager PyTorch, exactly what the engine documents: the VGG
`features` prefix (torchvision layout, loaded from safetensors), the preprocessing
convention from the file's metadata, content MSE, normalised Gram style loss with
blended targets, total variation on [0,1] pixels, and torch.optim.LBFGS(max_iter=1,
line_search_fn as the case says: "strong_wolfe" or none) or torch.optim.Adam stepped once per iteration on a variable holding
pixels on a 0-255 scale (the engine's PIXEL_SCALE: the learning rate is in grey levels
and is handed to the optimizer as is).

    python nst_reference.py eval   --case case.json --out result.safetensors
    python nst_reference.py lbfgs  --case case.json --iterations 10 --out result.safetensors
    python nst_reference.py adam   --case case.json --iterations 10 --out result.safetensors
    python nst_reference.py bench  --case case.json --repeat 3 [--mode naive]

eval writes the gradient of the total (`grad`) and of each term on its own
(`grad.content`, `grad.style`, `grad.tv`), with the losses as JSON metadata. lbfgs and
adam write the final variable (`x`, 0-255) with the per-iteration totals (`history`: the
loss at the point each iteration started from, as the engine records it) and the final
losses as JSON metadata.

case.json names the weights file, an inputs safetensors file (content, style.N, x) and
the loss parameters.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

PIXEL_SCALE = 255.0
VGG_BLOCKS = {"vgg16": [2, 2, 3, 3, 3], "vgg19": [2, 2, 4, 4, 4]}


def layer_table(arch):
    """name -> (index, kind) in torchvision's `features`."""
    table, index = {}, 0
    for b, convs in enumerate(VGG_BLOCKS[arch]):
        for c in range(convs):
            table[f"conv{b + 1}_{c + 1}"] = (index, "conv")
            table[f"relu{b + 1}_{c + 1}"] = (index + 1, "relu")
            index += 2
        table[f"pool{b + 1}"] = (index, "pool")
        index += 1
    return table


class Reference:
    def __init__(self, case, device="cpu"):
        with safe_open(case["weights"], "pt") as f:
            meta = f.metadata() or {}
        self.arch = meta.get("architecture", "vgg19")
        self.convention = meta.get("preprocessing", "torchvision")
        self.weights = {k: v.to(device) for k, v in load_file(case["weights"]).items()}
        table = layer_table(self.arch)
        self.kinds = {i: k for (i, k) in table.values()}
        self.content_layers = [(table[l][0], w) for l, w in case["content_layers"]]
        self.style_layers = [(table[l][0], w) for l, w in case["style_layers"]]
        self.taps = sorted({i for i, _ in self.content_layers + self.style_layers})
        self.pooling = case.get("pooling", "max")
        self.cw, self.sw, self.tw = case["content_weight"], case["style_weight"], case["tv_weight"]
        inputs = {k: v.to(device) for k, v in load_file(case["inputs"]).items()}
        self.x0 = inputs["x"]
        blend = case["blend"]
        with torch.no_grad():
            feats = self.forward(inputs["content"])
            self.content_targets = [feats[i] for i, _ in self.content_layers]
            grams = None
            for n, b in enumerate(blend):
                feats = self.forward(inputs[f"style.{n}"])
                g = [gram(feats[i]) * b for i, _ in self.style_layers]
                grams = g if grams is None else [a + c for a, c in zip(grams, g)]
            self.style_targets = grams
            # Each term is relative to its target's size (the engine's loss.rs).
            self.content_sizes = [(t**2).mean() for t in self.content_targets]
            self.style_sizes = [(t**2).mean() for t in self.style_targets]
            self.tv_size = tv(inputs["content"]).clamp_min(TV_FLOOR)

    def preprocess(self, rgb):
        if self.convention == "caffe":
            mean = torch.tensor([103.939, 116.779, 123.68], device=rgb.device).view(1, 3, 1, 1)
            return rgb.flip(1) * 255.0 - mean
        mean = torch.tensor([0.485, 0.456, 0.406], device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=rgb.device).view(1, 3, 1, 1)
        return (rgb - mean) / std

    def forward(self, rgb):
        x, out = self.preprocess(rgb), {}
        for i in range(max(self.taps) + 1):
            kind = self.kinds[i]
            if kind == "conv":
                x = F.conv2d(x, self.weights[f"features.{i}.weight"], self.weights[f"features.{i}.bias"], padding=1)
            elif kind == "relu":
                x = F.relu(x)
            elif self.pooling == "avg":
                x = F.avg_pool2d(x, 2, 2)
            else:
                x = F.max_pool2d(x, 2, 2)
            if i in self.taps:
                out[i] = x
        return out

    def losses(self, y):
        x = y / PIXEL_SCALE
        feats = self.forward(x)
        content = sum(
            ((feats[i] - t) ** 2).mean() / n * w
            for (i, w), t, n in zip(self.content_layers, self.content_targets, self.content_sizes)
        )
        style = sum(
            ((gram(feats[i]) - t) ** 2).mean() / n * w
            for (i, w), t, n in zip(self.style_layers, self.style_targets, self.style_sizes)
        )
        content, style = content * self.cw, style * self.sw
        tv_term = tv(x) / self.tv_size * self.tw
        return content + style + tv_term, {"content": content, "style": style, "tv": tv_term}


TV_FLOOR = 1e-4


def tv(x):
    return ((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2).mean() + ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).mean()


def gram(f):
    _, c, h, w = f.shape
    f = f.reshape(c, h * w)
    return f @ f.t() / (c * h * w)


def cmd_eval(case, args):
    ref = Reference(case)
    y = ref.x0.clone().requires_grad_(True)
    total, parts = ref.losses(y)
    grads = {}
    for name, term in parts.items():
        (grads[f"grad.{name}"],) = torch.autograd.grad(term, [y], retain_graph=True)
    (grads["grad"],) = torch.autograd.grad(total, [y])
    losses = {**{k: float(v) for k, v in parts.items()}, "total": float(total)}
    save_file({k: v.contiguous() for k, v in grads.items()}, args.out, metadata={"losses": json.dumps(losses)})


def optimize(case, args, make_optimizer, with_closure):
    """Runs `args.iterations` steps; records the loss each step started from."""
    ref = Reference(case)
    y = ref.x0.clone().requires_grad_(True)
    opt = make_optimizer(y)

    def closure():
        opt.zero_grad()
        total, _ = ref.losses(y)
        total.backward()
        return total

    history = []
    for _ in range(args.iterations):
        if with_closure:
            history.append(float(opt.step(closure)))
        else:
            history.append(float(closure()))
            opt.step()
    with torch.no_grad():
        total, parts = ref.losses(y)
    meta = {**{k: float(v) for k, v in parts.items()}, "total": float(total), "history": history}
    save_file({"x": y.detach().contiguous()}, args.out, metadata={"result": json.dumps(meta)})


def cmd_lbfgs(case, args):
    optimize(
        case,
        args,
        lambda y: torch.optim.LBFGS(
            [y],
            lr=case.get("learning_rate", 1.0),
            max_iter=1,
            # The search may take 25 evaluations (torch's default max_ls); torch gives it
            # max_eval - 1, and max_eval defaults to 1.25 * max_iter.
            max_eval=26,
            history_size=case.get("lbfgs_history", 100),
            line_search_fn=case.get("line_search"),
        ),
        with_closure=True,
    )


def cmd_adam(case, args):
    # The engine's Adam: defaults (betas 0.9/0.999, eps 1e-8, no weight decay), the
    # single-tensor update, the rate as given on the 0-255 variable.
    optimize(case, args, lambda y: torch.optim.Adam([y], lr=case["learning_rate"], foreach=False), with_closure=False)


def cmd_bench(case, args):
    """Seconds per evaluation (forward, losses, backward).

    matched: the engine's own recipe in eager PyTorch (frozen weights, gradient for the
    image only). naive: the usual tutorial code, an nn.Module whose parameters keep
    requires_grad=True and `loss.backward()`, which also computes every weight gradient.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    ref = Reference(case)
    if args.mode == "naive":
        for w in ref.weights.values():
            w.requires_grad_(True)
    y = ref.x0.clone().requires_grad_(True)
    times = []
    for _ in range(args.warmup + args.repeat):
        t0 = time.perf_counter()
        total, _ = ref.losses(y)
        if args.mode == "naive":
            for w in ref.weights.values():
                w.grad = None
            y.grad = None
            total.backward()
        else:
            torch.autograd.grad(total, [y])
        times.append(time.perf_counter() - t0)
    best = sorted(times[args.warmup:])
    print(json.dumps({"median_s": best[len(best) // 2], "min_s": best[0], "threads": torch.get_num_threads()}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["eval", "lbfgs", "adam", "bench"])
    p.add_argument("--case", required=True)
    p.add_argument("--out")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--mode", choices=["matched", "naive"], default="matched")
    args = p.parse_args()
    with open(args.case) as f:
        case = json.load(f)
    {"eval": cmd_eval, "lbfgs": cmd_lbfgs, "adam": cmd_adam, "bench": cmd_bench}[args.command](case, args)


if __name__ == "__main__":
    main()
