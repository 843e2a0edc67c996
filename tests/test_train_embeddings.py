"""stamcli.train.embeddings: the frozen backbone's frame embeddings, computed once per setup and
cached in the run folder, keyed by what they depend on."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_LABELS, make_tiny_model
from synthetic import write_index_video
from stamcli.decode import read_clip
from stamcli.distributed import Distributed
from stamcli.train import embeddings
from stamcli.train.data import Example

INDEX = {label: i for i, label in enumerate(TINY_LABELS)}


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[Example]:
    root = tmp_path_factory.mktemp("embeddings")
    return [Example(str(write_index_video(root / f"c{i}.mp4", 8 + i, 48, 64)), TINY_LABELS[i % 5], f"row {i}")
            for i in range(5)]


def _cached(model, train, val, folder):
    return embeddings.cached_embeddings(model, train, val, INDEX, folder, device=torch.device("cpu"),
                                        precision="fp32", batch_size=2, workers=0, dist=Distributed())


def test_cached_embeddings_are_the_backbone_s_frame_embeddings_with_the_labels(examples, tmp_path):
    model = make_tiny_model()
    train, val = _cached(model, examples[:3], examples[3:], tmp_path / "cache")
    assert (len(train), len(val)) == (3, 2)
    for dataset, part in ((train, examples[:3]), (val, examples[3:])):
        for (frame_embeddings, target), example in zip(dataset, part):
            clip = read_clip(example.path, 4, 32)
            with torch.inference_mode():
                expected = model.embed_frames(clip.frames[None].float() / 255)[0]
            assert frame_embeddings.dtype == torch.float16 and frame_embeddings.shape == (4, 64)
            assert torch.allclose(frame_embeddings.float(), expected, atol=2e-3, rtol=2e-3)  # float16 storage
            assert target.item() == INDEX[example.label]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["train", "val"]


def test_the_cache_is_reused_for_the_same_setup_and_not_for_another(examples, tmp_path, monkeypatch):
    model = make_tiny_model()
    folder = tmp_path / "cache"
    _cached(model, examples[:3], examples[3:], folder)
    first = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    calls = []
    real = embeddings._embed
    monkeypatch.setattr(embeddings, "_embed", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    # the same setup: nothing computed, the files untouched; a trained temporal part or head changes nothing
    with torch.no_grad():
        for param in [*model.temporal.parameters(), *model.head.parameters()]:
            param.add_(0.5)
    train, _ = _cached(model, examples[:3], examples[3:], folder)
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == first
    # another video list, other backbone weights, another frame count: computed again, in new files
    _cached(model, examples[:2], examples[3:], folder)
    assert calls == [2]
    with torch.no_grad():
        model.spatial.patch_embed.proj.weight.mul_(1.01)
    _cached(model, examples[:2], examples[3:], folder)
    assert calls == [2, 2, 2]
    other_frames = make_tiny_model(frames=6)
    other_frames.spatial.load_state_dict(model.spatial.state_dict())
    _cached(other_frames, examples[:2], examples[3:], folder)
    assert calls == [2, 2, 2, 2, 2]
    assert len(list(folder.iterdir())) == 2 + 1 + 2 + 2
    assert not list(folder.glob("*.tmp"))


def test_cache_key_depends_on_the_order_of_the_videos(examples):
    model = make_tiny_model()
    assert embeddings._cache_key(model, examples) == embeddings._cache_key(model, list(examples))
    assert embeddings._cache_key(model, examples) != embeddings._cache_key(model, examples[::-1])
