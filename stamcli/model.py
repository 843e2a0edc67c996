"""The STAM network: a timm Vision Transformer on every frame, a temporal transformer on top.

Shapes follow the authors' release (Sharir et al., 2021, and their public code, whose checkpoints
:mod:`stamcli.checkpoints` loads): input ``(videos, frames, 3, H, W)`` floats in
[0, 1] with no mean/std normalisation; each frame goes through the spatial ViT, whose final-norm
class token is the frame embedding; a learned temporal class token and position embedding are
added and an ``nn.TransformerEncoder`` (ReLU feed-forward, LayerNorm eps 1e-5) mixes the frames;
a final LayerNorm and a Linear head give the logits. The head always computes in float32
(:class:`ClassifierHead`), also under bf16/fp16 autocast. The authors' encoder is post-norm, 6 layers
(:data:`AUTHORS_TEMPORAL_NORM`); a model can have a pre-norm one of any depth instead, with the same
parameter names (``temporal_norm``, ``temporal_layers`` in :class:`STAMConfig`).

The module's own parameter names are ``spatial.*``, ``temporal.*`` and ``head.*``; the authors'
names (``blocks.*``, ``aggregate.*``, ``head.*``) are mapped in :mod:`stamcli.checkpoints`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .errors import StamError
from .zoo import default_labels

log = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-5  # the authors' value in both transformers (timm's ViT default is 1e-6)
TEMPORAL_NORMS = ("post", "pre")  #: LayerNorm after each sub-layer's residual sum (the authors'), or before
AUTHORS_TEMPORAL_NORM = "post"
#: initial std of the temporal position embedding with ``temporal_input_norm`` (the authors': 0.02)
STANDARDISED_POSITION_STD = 0.3

#: Frames the spatial ViT takes per pass on the CPU, so that its activations stay below glibc's
#: 32 MiB mmap threshold and are reused from the heap (:mod:`stamcli.allocator`); the results are
#: the same to float rounding. Chosen by page-fault counts: ``benchmarks/README.md``,
#: "Measurements behind the code".
CPU_FRAME_CHUNK = 8


@dataclass
class STAMConfig:
    """Everything needed to rebuild a STAM network (weights aside).

    Spatial fields left as ``None`` take the timm default of ``backbone``; :class:`STAM` fills
    them in from the built backbone, so a model's ``config`` is always complete.
    """

    backbone: str = "vit_base_patch16_224"
    frames: int = 16
    num_classes: int = 400
    img_size: int = 224
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    patch_size: Optional[int] = None
    mlp_ratio: Optional[float] = None
    temporal_layers: int = 6
    temporal_norm: str = AUTHORS_TEMPORAL_NORM  # a checkpoint without this field has the authors' form
    temporal_input_norm: bool = False  # BatchNorm on the frame embeddings (the authors' have none)
    temporal_heads: int = 8
    temporal_ff: int = 2048
    temporal_dropout: float = 0.1  # active only in training mode, as in the authors' code
    drop_path_rate: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "STAMConfig":
        """Build from a dict, rejecting unknown keys with a message that lists the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StamError(
                f"unknown architecture field(s): {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def check(self) -> None:
        if self.temporal_norm not in TEMPORAL_NORMS:
            raise StamError(f"temporal_norm must be one of {', '.join(TEMPORAL_NORMS)}, not {self.temporal_norm!r}")
        if self.temporal_layers < 1:
            raise StamError(f"temporal_layers must be at least 1, not {self.temporal_layers}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spatial_overrides(config: STAMConfig) -> dict[str, Any]:
    names = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")
    return {name: getattr(config, name) for name in names if getattr(config, name) is not None}


def build_spatial(config: STAMConfig) -> VisionTransformer:
    """The per-frame ViT: ``timm.create_model(config.backbone)`` without a head, LayerNorm eps 1e-5."""
    if not timm.is_model(config.backbone):
        raise StamError(
            f"unknown timm backbone {config.backbone!r}; choose a Vision Transformer such as "
            "vit_base_patch16_224, vit_small_patch16_224 or vit_tiny_patch16_224 "
            "(timm.list_models('vit_*') lists them all)"
        )
    try:
        backbone = timm.create_model(
            config.backbone,
            pretrained=False,
            num_classes=0,
            img_size=config.img_size,
            norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS),
            drop_path_rate=config.drop_path_rate,
            **_spatial_overrides(config),
        )
    except TypeError as err:  # the model's constructor does not take ViT options
        raise StamError(f"backbone {config.backbone!r} is not a timm VisionTransformer ({err})") from None
    if not isinstance(backbone, VisionTransformer):
        raise StamError(
            f"backbone {config.backbone!r} is a {type(backbone).__name__}, not a timm VisionTransformer"
        )
    return backbone


def _describe_backbone(config: STAMConfig, backbone: VisionTransformer) -> None:
    """Fill the config's open spatial fields from the built backbone."""
    block = backbone.blocks[0]
    config.embed_dim = backbone.embed_dim
    config.depth = len(backbone.blocks)
    config.num_heads = block.attn.num_heads
    config.patch_size = backbone.patch_embed.patch_size[0]
    config.mlp_ratio = block.mlp.fc1.out_features / backbone.embed_dim


def resample_temporal_positions(pos_embed: torch.Tensor, frames: int) -> torch.Tensor:
    """``(1, F + 1, D)`` -> ``(1, frames + 1, D)``: the class position kept, frame positions linearly
    interpolated between sample centres."""
    cls_pos, frame_pos = pos_embed[:, :1], pos_embed[:, 1:]
    frame_pos = F.interpolate(frame_pos.transpose(1, 2), size=frames, mode="linear", align_corners=False)
    return torch.cat([cls_pos, frame_pos.transpose(1, 2)], dim=1)


class ClassifierHead(nn.Linear):
    """The Linear layer from the video embedding to the logits, computed in float32 under autocast.

    Under bf16 autocast a Linear layer rounds its outputs to bf16 (8 significant bits): with 400
    classes, scores moved by up to 0.01, top-5 orders changed and scores tied exactly. The head is
    a tiny share of the model's work, so it runs in float32 wherever it is used (prediction,
    evaluation, timelines, training); the softmax of its float32 logits is then float32 too.
    Outside autocast it is a plain :class:`torch.nn.Linear` (and exports as one).
    """

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        device_type = embedding.device.type
        if torch.jit.is_scripting() or torch.jit.is_tracing() or not torch.is_autocast_enabled(device_type):
            return super().forward(embedding)
        with torch.autocast(device_type, enabled=False):
            return F.linear(embedding.float(), self.weight.float(), self.bias.float())


class TemporalTransformer(nn.Module):
    """The authors' ``aggregate`` module: class token + position embedding + encoder + final norm.

    ``norm="post"`` is the authors' encoder; ``"pre"`` puts each LayerNorm before its sub-layer
    (``norm_first``), which trains from scratch on small data at a higher learning rate
    (``benchmarks/README.md``). Both have the same parameters under the same names.
    """

    def __init__(self, embed_dim: int, frames: int, layers: int, heads: int, feedforward: int, dropout: float,
                 norm: str = AUTHORS_TEMPORAL_NORM, input_norm: bool = False):
        super().__init__()
        if embed_dim % heads:
            raise StamError(f"temporal heads ({heads}) must divide the embedding size ({embed_dim})")
        self.frames = frames
        # standardises each channel of the frame embeddings over the batch's frames (none in the authors')
        self.input_norm = nn.BatchNorm1d(embed_dim) if input_norm else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, frames + 1, embed_dim))
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            heads,
            dim_feedforward=feedforward,
            dropout=dropout,
            activation="relu",
            layer_norm_eps=LAYER_NORM_EPS,
            batch_first=True,
            norm_first=norm == "pre",
        )
        self.transformer_enc = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS), enable_nested_tensor=False
        )
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if input_norm:  # next to standardised frame embeddings, positions start visible enough to learn order
            std = STANDARDISED_POSITION_STD
            nn.init.trunc_normal_(self.pos_embed, std=std, a=-2 * std, b=2 * std)
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self._warned_counts: set[int] = set()

    def position_embedding(self, frames: int) -> torch.Tensor:
        """The ``(1, frames + 1, D)`` position embedding, linearly interpolated for another count."""
        if frames == self.frames:
            return self.pos_embed
        if frames not in self._warned_counts:
            self._warned_counts.add(frames)
            log.warning(
                "model was trained for %d frames and runs on %d: interpolating its temporal position "
                "embedding (accuracy may drop)", self.frames, frames,
            )
        return resample_temporal_positions(self.pos_embed, frames)

    def forward(self, frame_embeddings: torch.Tensor) -> torch.Tensor:
        """``(videos, frames, D)`` frame embeddings -> ``(videos, D)`` video embeddings."""
        videos, frames, _ = frame_embeddings.shape
        cls = self.cls_token.expand(videos, -1, -1)
        if self.input_norm is not None:
            frame_embeddings = self.input_norm(frame_embeddings.flatten(0, 1)).view_as(frame_embeddings)
        x = torch.cat([cls, frame_embeddings], dim=1) + self.position_embedding(frames)
        return self.transformer_enc(x)[:, 0]


def describe_temporal(layers: int, norm: str, input_norm: bool) -> str:
    """``"2 pre-norm layers with input BatchNorm"``, ``"6 post-norm layers"`` (the authors')."""
    return f"{layers} {norm}-norm layer{'s' if layers != 1 else ''}{' with input BatchNorm' if input_norm else ''}"


def _build_temporal(config: STAMConfig) -> TemporalTransformer:
    return TemporalTransformer(config.embed_dim, config.frames, config.temporal_layers, config.temporal_heads,
                               config.temporal_ff, config.temporal_dropout, config.temporal_norm,
                               config.temporal_input_norm)


class STAM(nn.Module):
    """Space Time Attention Model.

    Attributes set by the loaders in :mod:`stamcli.checkpoints`: ``labels`` (one name per output)
    and ``name`` (zoo name or file the weights came from). ``frame_chunk``: frames per spatial
    pass on the CPU (:data:`CPU_FRAME_CHUNK`; None: all frames of the batch in one pass, as on
    a GPU, where large batches keep the device busy).
    """

    frame_chunk: Optional[int] = CPU_FRAME_CHUNK

    def __init__(self, config: STAMConfig, labels: Optional[Sequence[str]] = None, name: str = "stam"):
        super().__init__()
        config.check()
        self.spatial = build_spatial(config)
        _describe_backbone(config, self.spatial)
        self.config = config
        self.temporal = _build_temporal(config)
        self.head = ClassifierHead(config.embed_dim, config.num_classes)
        self.name = name
        self.labels = list(labels) if labels is not None else default_labels(config.num_classes)
        if len(self.labels) != config.num_classes:
            raise StamError(f"{len(self.labels)} labels given for a model with {config.num_classes} outputs")

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def _check_input(self, videos: torch.Tensor) -> None:
        size = self.config.img_size
        if videos.ndim != 5 or videos.shape[2] != 3 or tuple(videos.shape[-2:]) != (size, size):
            raise ValueError(f"expected videos of shape (videos, frames, 3, {size}, {size}), got {tuple(videos.shape)}")

    def embed_frames(self, videos: torch.Tensor) -> torch.Tensor:
        """``(videos, frames, 3, H, W)`` in [0, 1] -> per-frame embeddings ``(videos, frames, D)``."""
        self._check_input(videos)
        count, frames = videos.shape[:2]
        images = videos.flatten(0, 1)
        chunk = self.frame_chunk if images.device.type == "cpu" else None
        if chunk is None or len(images) <= chunk:
            return self._embed_images(images).view(count, frames, -1)
        parts = [self._embed_images(images[start : start + chunk]) for start in range(0, len(images), chunk)]
        return torch.cat(parts).view(count, frames, -1)

    def _embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> ``(N, D)``: the spatial ViT's final-norm class tokens."""
        return self.spatial.forward_head(self.spatial.forward_features(images), pre_logits=True)

    def embed_with_frames(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(video embeddings (videos, D), frame embeddings (videos, frames, D))`` in one pass."""
        frames = self.embed_frames(videos)
        return self.temporal(frames), frames

    def forward_embedding(self, videos: torch.Tensor) -> torch.Tensor:
        """The video embedding (temporal class token after the final norm), ``(videos, D)``."""
        return self.embed_with_frames(videos)[0]

    def forward_with_embedding(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, embedding)`` in one pass."""
        embedding = self.forward_embedding(videos)
        return self.head(embedding), embedding

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """Logits ``(videos, num_classes)``."""
        return self.head(self.forward_embedding(videos))

    # ------------------------------------------------------------------ adapting a model to new data

    def reset_head(self, labels: Sequence[str]) -> None:
        """A new, randomly initialised head for ``labels`` (fine-tuning on other classes)."""
        labels = list(labels)
        self.head = ClassifierHead(self.config.embed_dim, len(labels)).to(self.head.weight.device)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.config.num_classes = len(labels)
        self.labels = labels

    def reset_temporal(self, layers: Optional[int] = None, norm: Optional[str] = None,
                       input_norm: Optional[bool] = None) -> None:
        """A new, randomly initialised temporal encoder: ``layers`` layers, ``norm`` form, with or
        without ``input_norm`` (the current ones where None); heads, feed-forward size, dropout and
        frames stay."""
        config = replace(self.config, temporal_layers=self.config.temporal_layers if layers is None else layers,
                         temporal_norm=norm or self.config.temporal_norm,
                         temporal_input_norm=self.config.temporal_input_norm if input_norm is None else input_norm)
        config.check()
        self.temporal = _build_temporal(config).to(self.head.weight.device)
        self.config = config

    @torch.no_grad()
    def set_frames(self, frames: int) -> None:
        """Retrain-ready for ``frames`` frames: the temporal position embedding is resampled for good."""
        if frames == self.config.frames:
            return
        self.temporal.pos_embed = nn.Parameter(resample_temporal_positions(self.temporal.pos_embed, frames))
        self.temporal.frames = self.config.frames = frames

    def set_img_size(self, img_size: int) -> None:
        """Input size ``img_size``: the spatial position embedding is resampled (timm)."""
        if img_size == self.config.img_size:
            return
        self.spatial.set_input_size(img_size=(img_size, img_size))
        self.config.img_size = img_size


def create_model(
    backbone: str = "vit_base_patch16_224",
    *,
    frames: int = 16,
    num_classes: int = 400,
    labels: Optional[Sequence[str]] = None,
    **overrides: Any,
) -> STAM:
    """A randomly initialised STAM on any timm ViT (``vit_tiny_patch16_224`` for a CPU-sized one).

    ``overrides`` are :class:`STAMConfig` fields (``img_size``, ``depth``, ``temporal_layers``, ...).
    """
    config = STAMConfig.from_dict(dict(backbone=backbone, frames=frames, num_classes=num_classes, **overrides))
    return STAM(config, labels=labels, name=backbone)
