"""The model a fine-tuning run starts from.

``--model`` is a zoo name (the authors' Kinetics-400 weights; the head is replaced for the new
labels), a checkpoint file (continue fine-tuning; the head is kept when the labels are the same),
or a timm ViT name (a new model; ``--backbone-weights FILE`` loads local timm/ImageNet weights into
its spatial part, otherwise it starts from random weights).

A new model's temporal encoder is :data:`NEW_MODEL_TEMPORAL`, not the authors' 6 post-norm layers,
which learn the order of frames from a few hundred clips poorly (``benchmarks/README.md``).
``--temporal-layers`` / ``--temporal-norm`` / ``--temporal-input-norm`` choose another; given for a
zoo model or checkpoint whose encoder differs, they replace it with a new one.
:func:`build_model` also says which parts start from random weights, for their learning rate
(:mod:`stamcli.train.parts`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import timm

from ..errors import CheckpointError, StamError
from ..model import STAM, create_model, describe_temporal
from ..zoo import available_models
from .config import FinetuneConfig

log = logging.getLogger(__name__)

NEW_MODEL_FRAMES = 8
NEW_MODEL_IMG_SIZE = 224
#: a new model's temporal encoder (fields of FinetuneConfig and STAMConfig), chosen by measurement
NEW_MODEL_TEMPORAL = {"temporal_layers": 2, "temporal_norm": "pre", "temporal_input_norm": True}


@dataclass
class StartingModel:
    """The model a run starts from, and which of its parts (``backbone``, ``temporal``, ``head``)
    start from random weights."""

    model: STAM
    scratch: set[str] = field(default_factory=set)


def _load_backbone_weights(model: STAM, path: str) -> None:
    """Local timm ViT weights (``.pth``/``.safetensors``) into ``model.spatial``; heads are dropped."""
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"backbone weights not found: {file}")
    try:
        state = load_state_dict(str(file), weights_only=True)
    except Exception as err:  # timm raises several types for unreadable files
        raise CheckpointError(f"cannot read backbone weights {file}: {str(err).splitlines()[0]}") from None
    state = checkpoint_filter_fn(state, model.spatial)  # resamples position embeddings, renames keys
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))}
    result = model.spatial.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc_norm."))]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{file} does not fit backbone {model.config.backbone}: missing {missing[:6]}, "
            f"unexpected {result.unexpected_keys[:6]}"
        )
    log.info("loaded backbone weights from %s", file)


def build_model(config: FinetuneConfig, labels: Sequence[str]) -> StartingModel:
    """The starting model for ``config``, with a head for ``labels``, at its frames and input size."""
    source = config.model
    scratch = set()
    if source in available_models() or Path(source).suffix in (".pth", ".pt", ".safetensors") or Path(source).is_file():
        from .. import load_model

        model = load_model(source, weights_dir=config.weights_dir, mirror=config.mirror, offline=config.offline)
        if config.backbone_weights:
            raise StamError("--backbone-weights is for a new model (--model <timm backbone name>)")
        own = tuple(getattr(model.config, name) for name in NEW_MODEL_TEMPORAL)
        wanted = tuple(mine if getattr(config, name) is None else getattr(config, name)
                       for name, mine in zip(NEW_MODEL_TEMPORAL, own))
        if wanted != own:
            log.warning("replacing the model's temporal encoder (%s) with a new one (%s), trained from scratch",
                        describe_temporal(*own), describe_temporal(*wanted))
            model.reset_temporal(*wanted)
            scratch.add("temporal")
    elif timm.is_model(source):
        model = create_model(
            source, frames=config.frames or NEW_MODEL_FRAMES, num_classes=len(labels), labels=labels,
            img_size=config.img_size or NEW_MODEL_IMG_SIZE,
            **{name: default if getattr(config, name) is None else getattr(config, name)
               for name, default in NEW_MODEL_TEMPORAL.items()},
        )
        scratch |= {"temporal", "head"}
        if config.backbone_weights:
            _load_backbone_weights(model, config.backbone_weights)
        else:
            scratch.add("backbone")
    else:
        raise StamError(
            f"--model {source!r} is neither a zoo model ({', '.join(available_models())}), "
            "a checkpoint file, nor a timm backbone name (e.g. vit_small_patch16_224)"
        )
    if list(model.labels) != list(labels):
        model.reset_head(labels)
        scratch.add("head")
    if config.frames:
        model.set_frames(config.frames)
    if config.img_size:
        model.set_img_size(config.img_size)
    return StartingModel(model.train(), scratch)
