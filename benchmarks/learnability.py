"""Does fine-tuning learn the order of frames from a few hundred clips? Accuracy, not speed.

    python -m benchmarks.learnability                 # the study in benchmarks/README.md (hours on 2 shared cores)
    python -m benchmarks.learnability --small         # the same on a small backbone (an hour on 2 shared cores)
    python -m benchmarks.learnability --quick         # tiny sizes, about a minute (tests/test_learnability.py)
    python -m benchmarks.learnability --seeds 3 4 --json out.json

Data (``tests/synthetic.py``): four pairs of classes whose clips hold the same frames in opposite
order (left/right, up/down, grow/shrink, brighten/darken) and two classes that time reversal leaves
the same (still, blink). Every seed draws new training, validation and held-out clips and a new
random backbone. Accuracy is on the held-out clips, over all classes and over the paired ones; a
model blind to order gets at most 50% on the pairs.

1. **Temporal heads on cached features.** A frozen, random ViT backbone; its frame embeddings are
   computed once with stamcli's ``--freeze-backbone`` cache. Candidate heads train on them with
   stamcli's recipe (AdamW over its parameter groups, warm-up and cosine decay, label smoothing,
   gradient clipping, batch size: the defaults of ``FinetuneConfig``) and are scored after the
   last epoch: the authors' 6-layer post-norm encoder and pre-norm encoders of several depths, each
   at several learning rates, and two baselines: a linear layer on the mean of the frame
   embeddings (blind to order) and on their concatenation.
2. **The defaults end to end.** ``stam finetune --model <timm ViT> --freeze-backbone`` with every
   other option at its default (the best validation epoch is kept), then ``stam evaluate`` on the
   held-out clips.
3. **The whole model.** The same without ``--freeze-backbone``: a small model, all of it trained
   with the defaults, must not collapse (the authors' encoder at 1e-3 predicts one class).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/learnability.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import machine, machine_text  # noqa: E402
from stamcli import create_model, load_checkpoint, save_checkpoint  # noqa: E402
from stamcli.distributed import Distributed  # noqa: E402
from stamcli.jobs import PredictOptions  # noqa: E402
from stamcli.model import STAM, describe_temporal  # noqa: E402
from stamcli.train.config import FinetuneConfig  # noqa: E402
from stamcli.train.data import read_examples  # noqa: E402
from stamcli.train.embeddings import cached_embeddings  # noqa: E402
from stamcli.train.evaluate import evaluate  # noqa: E402
from stamcli.train.finetune import TemporalHead, _lr_lambda, finetune  # noqa: E402
from stamcli.train.modelling import NEW_MODEL_TEMPORAL  # noqa: E402
from stamcli.train.parts import param_groups, plan_parts  # noqa: E402
from tests.synthetic import MOTION_PAIRS, ORDER_STUDY_CLASSES, write_motion_dataset  # noqa: E402

CLASSES = sorted(ORDER_STUDY_CLASSES)  #: the label order of every model here
PAIRED = sorted(set(MOTION_PAIRS) | set(MOTION_PAIRS.values()))
FRAMES = 8
RECIPE = FinetuneConfig()  #: the default recipe: batch size, weight decay, warm-up, smoothing, clipping


@dataclass(frozen=True)
class Head:
    """A candidate on cached features: a temporal encoder + linear head, or a linear baseline."""

    kind: str  #: "encoder", "mean" (linear on the mean frame embedding) or "concat" (on all of them)
    lr: float
    layers: int = 0
    norm: str = ""
    input_norm: bool = False

    @property
    def title(self) -> str:
        if self.kind == "mean":
            return "linear on the mean frame embedding (blind to order)"
        if self.kind == "concat":
            return "linear on the concatenated frame embeddings"
        authors = " (the authors')" if (self.layers, self.norm, self.input_norm) == (6, "post", False) else ""
        default = " (a new model's)" if (self.form, self.lr) == (DEFAULT_HEAD.form, DEFAULT_HEAD.lr) else ""
        return describe_temporal(*self.form) + authors + default

    @property
    def form(self) -> tuple:
        return self.layers, self.norm, self.input_norm


@dataclass(frozen=True)
class Profile:
    backbone: str  #: timm name of a new model, or "tiny" (a small checkpoint, for --quick)
    img_size: int
    video_size: int
    train_per_class: tuple[int, ...]  #: training-set sizes (clips per class); all heads on the first, the
    #: baselines and a new model's encoder on the others
    val_per_class: int
    test_per_class: int
    head_epochs: int
    heads: tuple[Head, ...]
    finetune_epochs: int  #: end to end, frozen backbone
    whole_epochs: int  #: end to end, the whole model trained
    whole_img_size: int
    seeds: tuple[int, ...]
    whole_backbone: str = ""  #: the whole-model run's backbone; "": ``backbone``

    @property
    def whole(self) -> str:
        return self.whole_backbone or self.backbone


def _encoders(layers: int, norm: str, input_norm: bool, lrs) -> tuple[Head, ...]:
    return tuple(Head("encoder", lr, layers, norm, input_norm) for lr in lrs)


NEW_MODEL_LR = FinetuneConfig().lr * FinetuneConfig().scratch_lr_scale  #: a new temporal encoder's default rate
BASELINES = (Head("mean", 1e-2), Head("concat", 1e-3))
DEFAULT_HEAD = Head("encoder", NEW_MODEL_LR, *NEW_MODEL_TEMPORAL.values())
FULL = Profile(
    backbone="vit_tiny_patch16_224", img_size=112, video_size=48, train_per_class=(12, 24), val_per_class=6,
    test_per_class=20, head_epochs=40,
    heads=(*BASELINES, *_encoders(6, "post", False, (1e-4, 3e-4, 1e-3)), *_encoders(6, "pre", False, (3e-4,)),
           *_encoders(2, "pre", False, (1e-3,)), *_encoders(1, "pre", True, (1e-3,)),
           *_encoders(2, "pre", True, (3e-4, 1e-3, 3e-3))),
    finetune_epochs=40, whole_epochs=10, whole_img_size=48, seeds=(0, 1, 2),
)
QUICK = Profile(
    backbone="tiny", img_size=48, video_size=48, train_per_class=(12,), val_per_class=3, test_per_class=6,
    head_epochs=20, heads=(BASELINES[0], DEFAULT_HEAD), finetune_epochs=20, whole_epochs=3, whole_img_size=48,
    seeds=(0,),
)
SMALL = Profile(  # the full study's heads, sizes and end-to-end runs on the --quick backbone: minutes, not hours
    backbone="tiny", img_size=48, video_size=48, train_per_class=(12, 24), val_per_class=6, test_per_class=20,
    head_epochs=40, heads=FULL.heads, finetune_epochs=40, whole_backbone="vit_tiny_patch16_224", whole_epochs=10,
    whole_img_size=32, seeds=(1, 2, 3),
)
TINY = dict(embed_dim=64, depth=2, num_heads=2, temporal_heads=4, temporal_ff=128)  #: the --quick backbone
BACKBONE_TEXT = {"tiny": "a 2-block ViT of width 64 (temporal encoders: 4 heads, feed-forward 128)"}


# ---------------------------------------------------------------------------- data and scores

def make_data(root: Path, profile: Profile, seed: int, per_class: int) -> dict[str, Path]:
    """labels.csv of new training, validation and held-out clips for ``seed``."""
    sizes = {"train": per_class, "val": profile.val_per_class, "test": profile.test_per_class}
    return {name: write_motion_dataset(root / f"{name}-{seed}-{count}", per_class=count, frames=FRAMES,
                                       size=profile.video_size, seed=seed * 10 + k, classes=CLASSES) / "labels.csv"
            for k, (name, count) in enumerate(sizes.items())}


def scores(predicted: torch.Tensor, targets: torch.Tensor) -> dict:
    paired = torch.tensor([CLASSES[t] in PAIRED for t in targets.tolist()])
    right = predicted == targets
    return {"top1": right.float().mean().item(), "paired_top1": right[paired].float().mean().item(),
            "distinct_predictions": len(set(predicted.tolist()))}


def report_scores(report: dict) -> dict:
    """:func:`scores` of a ``stam evaluate`` report (its confusion matrix; labels in CLASSES order)."""
    confusion = torch.tensor(report["confusion"])
    targets = torch.arange(len(CLASSES)).repeat_interleave(confusion.sum(1))
    predicted = torch.cat([torch.arange(len(CLASSES)).repeat_interleave(row) for row in confusion])
    return scores(predicted, targets)


def new_model(backbone: str, seed: int, img_size: int, root: Path) -> str:
    """``--model`` for a new model: the timm name, or for ``tiny`` a checkpoint of a small random
    model (other labels, so its head is new; its backbone counts as trained weights)."""
    if backbone != "tiny":
        return backbone
    torch.manual_seed(seed)
    model = create_model("vit_tiny_patch16_224", frames=FRAMES, num_classes=2, labels=["a", "b"],
                         img_size=img_size, **TINY)
    return str(save_checkpoint(model, root / f"tiny-{seed}-{img_size}.safetensors"))


def _new_model_options(backbone: str) -> dict:
    """FinetuneConfig options that make ``--quick``'s checkpoint start like a new model: the new
    model's temporal encoder replaces the checkpoint's, so it starts from scratch too."""
    if backbone != "tiny":
        return {}
    return dict(NEW_MODEL_TEMPORAL)


# ---------------------------------------------------------------------------- 1. heads on cached features

class LinearBaseline(nn.Module):
    def __init__(self, dim: int, classes: int, mean: bool):
        super().__init__()
        self.mean = mean
        self.head = nn.Linear(dim if mean else dim * FRAMES, classes)

    def forward(self, frame_embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(frame_embeddings.mean(1) if self.mean else frame_embeddings.flatten(1))


def _candidate(head: Head, backbone: STAM) -> tuple[nn.Module, list[dict]]:
    """The network on frame embeddings and its optimiser groups (stamcli's, for an encoder)."""
    if head.kind != "encoder":
        net = LinearBaseline(backbone.embed_dim, len(CLASSES), mean=head.kind == "mean")
        return net, [{"params": list(net.parameters()), "weight_decay": 0.0, "lr": head.lr}]
    backbone.reset_temporal(*head.form)
    backbone.reset_head(CLASSES)
    parts = plan_parts(backbone, {"temporal", "head"}, lr=head.lr, scratch_lr_scale=1.0, freeze_backbone=True)
    return TemporalHead(backbone), param_groups(backbone, parts, RECIPE.weight_decay)


def train_on_features(net: nn.Module, groups: list[dict], train, epochs: int, seed: int) -> nn.Module:
    """stamcli's training recipe (``FinetuneConfig`` defaults) on cached frame embeddings."""
    features, targets = train.tensors
    features = features.float()
    optimizer = torch.optim.AdamW(groups)
    steps = math.ceil(len(features) / RECIPE.batch_size)
    total = steps * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(min(total, round(RECIPE.warmup * steps)), total))
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), RECIPE.batch_size):
            batch = order[start : start + RECIPE.batch_size]
            loss = F.cross_entropy(net(features[batch]), targets[batch], label_smoothing=RECIPE.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), RECIPE.clip_grad)
            optimizer.step()
            scheduler.step()
    return net.eval()


def study_heads(profile: Profile, heads, data: dict[str, Path], seed: int, root: Path, log) -> list[dict]:
    torch.manual_seed(seed)
    backbone = load_checkpoint(new_model(profile.backbone, seed, profile.img_size, root)) if profile.backbone == "tiny" else \
        create_model(profile.backbone, frames=FRAMES, num_classes=len(CLASSES), labels=CLASSES,
                     img_size=profile.img_size)
    index = {label: i for i, label in enumerate(CLASSES)}
    train, test = cached_embeddings(
        backbone, read_examples(data["train"]), read_examples(data["test"]), index, root / "cache",
        device=torch.device("cpu"), precision="fp32", batch_size=8, workers=0, dist=Distributed())
    rows = []
    for head in heads:
        torch.manual_seed(seed)
        net, groups = _candidate(head, backbone)
        net = train_on_features(net, groups, train, profile.head_epochs, seed)
        with torch.no_grad():
            predicted = net(test.tensors[0].float()).argmax(-1)
        rows.append({"head": head.title, "kind": head.kind, "layers": head.layers, "norm": head.norm,
                     "input_norm": head.input_norm, "lr": head.lr, **scores(predicted, test.tensors[1])})
        log(f"  heads, seed {seed}, {len(train)} clips: {head.title} at {head.lr:g}: top-1 {rows[-1]['top1']:.3f}, "
            f"pairs {rows[-1]['paired_top1']:.3f}")
    return rows


# ---------------------------------------------------------------------------- 2, 3: stam finetune end to end

def finetune_end_to_end(profile: Profile, data: dict[str, Path], seed: int, root: Path, *, frozen: bool) -> dict:
    """``stam finetune`` with its defaults, then ``stam evaluate`` of its best model on the held-out clips."""
    img_size = profile.img_size if frozen else profile.whole_img_size
    backbone = profile.backbone if frozen else profile.whole
    config = FinetuneConfig(
        data=str(data["train"]), val=str(data["val"]), model=new_model(backbone, seed, img_size, root),
        frames=FRAMES, img_size=img_size, epochs=profile.finetune_epochs if frozen else profile.whole_epochs,
        freeze_backbone=frozen, workers=0, seed=seed, device="cpu", output=str(root / f"run-{seed}-{frozen}"),
        **_new_model_options(backbone))
    result = finetune(config)
    model = load_checkpoint(result.run_dir / "best.safetensors")
    report = evaluate(data["test"], model, PredictOptions(device="cpu", batch_size=8, workers=1))
    parts = json.loads((result.run_dir / "trained_parts.json").read_text())["parts"]
    form = (model.config.temporal_layers, model.config.temporal_norm, model.config.temporal_input_norm)
    return {"best_val_top1": result.best_top1, **report_scores(report),
            "lrs": {p["name"]: p["lr"] for p in parts}, "temporal": describe_temporal(*form)}


# ---------------------------------------------------------------------------- the study

def run(profile: Profile, log=print) -> dict:
    results = {"machine": machine(), "profile": {"backbone": profile.backbone, "img_size": profile.img_size,
                                                 "frames": FRAMES, "classes": CLASSES, "seeds": list(profile.seeds),
                                                 "train_per_class": list(profile.train_per_class),
                                                 "head_epochs": profile.head_epochs,
                                                 "finetune_epochs": profile.finetune_epochs,
                                                 "whole_epochs": profile.whole_epochs,
                                                 "whole_img_size": profile.whole_img_size,
                                                 "whole_backbone": profile.whole},
               "heads": [], "defaults": [], "whole_model": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in profile.seeds:
            for size, per_class in enumerate(profile.train_per_class):
                data = make_data(root, profile, seed, per_class)
                clips = per_class * len(CLASSES)
                heads = profile.heads if size == 0 else tuple(dict.fromkeys((*BASELINES, DEFAULT_HEAD)))
                for row in study_heads(profile, heads, data, seed, root, log):
                    results["heads"].append({"seed": seed, "train_clips": clips, **row})
                row = finetune_end_to_end(profile, data, seed, root, frozen=True)
                results["defaults"].append({"seed": seed, "train_clips": clips, **row})
                log(f"  defaults, seed {seed}, {clips} clips: top-1 {row['top1']:.3f}, pairs {row['paired_top1']:.3f}")
            row = finetune_end_to_end(profile, data, seed, root, frozen=False)
            results["whole_model"].append({"seed": seed, "train_clips": clips, **row})
            log(f"  whole model, seed {seed}: top-1 {row['top1']:.3f}, pairs {row['paired_top1']:.3f}")
    return results


def _spread(values: list[float]) -> str:
    values = [100 * v for v in values]
    low, high, mid = min(values), max(values), statistics.median(values)
    return f"{mid:.0f}" if high - low < 0.5 else f"{mid:.0f} ({low:.0f}-{high:.0f})"


def _grouped(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    return groups


def markdown(results: dict) -> str:
    p = results["profile"]
    seeds = ", ".join(str(seed) for seed in p["seeds"])
    lines = [
        f"Machine: {machine_text(results['machine'])}. Backbone: {BACKBONE_TEXT.get(p['backbone'], p['backbone'])} "
        "with random weights, frozen; "
        f"{p['frames']} frames at {p['img_size']} px; {len(CLASSES)} classes, {len(PAIRED)} of them in "
        f"time-reversed pairs; seeds {seeds} (each: new clips, new backbone). Held-out top-1 in %: "
        "median (min-max) over the seeds.",
        "",
        f"Temporal heads on the cached frame embeddings, {p['head_epochs']} epochs, scored after the last one:",
        "",
        "| training clips | head | lr | held-out top-1 | on the paired classes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (clips, title, lr), rows in _grouped(results["heads"], "train_clips", "head", "lr").items():
        lines.append(f"| {clips} | {title} | {lr:g} | {_spread([r['top1'] for r in rows])} | "
                     f"{_spread([r['paired_top1'] for r in rows])} |")
    for key, title in (("defaults", f"`stam finetune --freeze-backbone`, {p['finetune_epochs']} epochs"),
                       ("whole_model", f"`stam finetune`, the whole model trained (a new model on "
                                       f"{p.get('whole_backbone', p['backbone'])}, {p['whole_img_size']} px), "
                                       f"{p['whole_epochs']} epochs")):
        if not results[key]:
            continue
        first = results[key][0]
        lrs = ", ".join(f"{name} {'frozen' if lr is None else f'{lr:g}'}" for name, lr in first["lrs"].items())
        lines += ["", f"{title}, every other option at its default (temporal encoder: {first['temporal']}; "
                      f"learning rates: {lrs}):", "",
                  "| training clips | runs | best validation top-1 | held-out top-1 | on the paired classes "
                  "| classes predicted |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for (clips,), rows in _grouped(results[key], "train_clips").items():
            distinct = sorted({r["distinct_predictions"] for r in rows})
            lines.append(f"| {clips} | {len(rows)} | {_spread([r['best_val_top1'] for r in rows])} | "
                         f"{_spread([r['top1'] for r in rows])} | {_spread([r['paired_top1'] for r in rows])} | "
                         f"{distinct[0]}-{distinct[-1]} of {len(CLASSES)} |")
    return "\n".join(lines)


def merge(parts: list[dict]) -> dict:
    """One result from runs of the same profile on other seeds (``--from-json``)."""
    merged = {**parts[0], "heads": [], "defaults": [], "whole_model": []}
    merged["profile"] = {**parts[0]["profile"], "seeds": sorted(s for part in parts for s in part["profile"]["seeds"])}
    for part in parts:
        for key in ("heads", "defaults", "whole_model"):
            merged[key] += part[key]
    return merged


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learnability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one seed (about a minute)")
    parser.add_argument("--small", action="store_true", help="every head, size and seed on a small backbone")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the profile's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: print the table of earlier --json results (seeds run apart)")
    args = parser.parse_args(argv)
    if args.from_json:
        results = merge([json.loads(path.read_text()) for path in args.from_json])
    else:
        profile = QUICK if args.quick else SMALL if args.small else FULL
        if args.seeds:
            profile = replace(profile, seeds=tuple(args.seeds))
        results = run(profile, log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
