"""The STAM module: shapes, the authors' architecture details, frame-count interpolation."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from conftest import TINY, make_tiny_model
from stamcli import STAMConfig, StamError, create_model
from stamcli.model import CPU_FRAME_CHUNK, LAYER_NORM_EPS, STAM, ClassifierHead


def test_logits_and_embeddings_have_the_documented_shapes(tiny_model):
    videos = torch.rand(3, 4, 3, 32, 32)
    with torch.inference_mode():
        logits = tiny_model(videos)
        frame_emb = tiny_model.embed_frames(videos)
        logits2, video_emb = tiny_model.forward_with_embedding(videos)
        from_embedding = tiny_model.head(video_emb)
    assert logits.shape == (3, 5)
    assert frame_emb.shape == (3, 4, 64)
    assert video_emb.shape == (3, 64)
    torch.testing.assert_close(logits, logits2)
    torch.testing.assert_close(logits, from_embedding)


def test_each_video_is_computed_independently_of_its_batch(tiny_model):
    videos = torch.rand(3, 4, 3, 32, 32)
    with torch.inference_mode():
        batched = tiny_model(videos)
        single = torch.cat([tiny_model(videos[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_frame_embedding_is_the_spatial_vit_class_token_after_final_norm(tiny_model):
    videos = torch.rand(1, 4, 3, 32, 32)
    vit = tiny_model.spatial
    with torch.inference_mode():
        tokens = vit.norm(vit.blocks(vit._pos_embed(vit.patch_embed(videos[0]))))
        expected = tokens[:, 0]
        got = tiny_model.embed_frames(videos)[0]
    torch.testing.assert_close(got, expected)


def test_authors_architecture_details(tiny_model):
    norms = [m for m in tiny_model.modules() if isinstance(m, nn.LayerNorm)]
    # spatial: norm1+norm2 per block + final norm; temporal: norm1+norm2 per layer + final norm
    assert len(norms) == (2 * 1 + 1) + (2 * 1 + 1)
    assert all(m.eps == LAYER_NORM_EPS == 1e-5 for m in norms)
    layer = tiny_model.temporal.transformer_enc.layers[0]
    assert layer.norm_first is False  # post-norm
    assert layer.activation_relu_or_gelu == 1  # ReLU
    assert layer.linear1.out_features == TINY["temporal_ff"]
    assert layer.self_attn.num_heads == 8
    assert tiny_model.temporal.pos_embed.shape == (1, 5, 64)
    assert isinstance(tiny_model.spatial.head, nn.Identity)
    assert tiny_model.spatial.global_pool == "token"


def test_frame_order_matters(tiny_model):
    with torch.no_grad():
        tiny_model.temporal.pos_embed.normal_()  # trained-size position embeddings, not init-size
    videos = torch.rand(1, 4, 3, 32, 32)
    with torch.inference_mode():
        forward = tiny_model(videos)
        backward = tiny_model(videos.flip(1))
    assert (forward - backward).abs().max() > 1e-4


def test_dropout_is_off_in_eval_and_on_in_train(tiny_model):
    videos = torch.rand(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tiny_model(videos), tiny_model(videos))
        tiny_model.train()
        torch.manual_seed(1)
        a = tiny_model(videos)
        torch.manual_seed(2)
        b = tiny_model(videos)
    assert not torch.equal(a, b)


def test_other_frame_counts_interpolate_the_temporal_position_embedding(tiny_model, caplog):
    temporal = tiny_model.temporal
    with torch.no_grad():
        # frame positions i = 0..3 carry the value of their centre (i + 0.5) / 4 in every channel
        ramp = (torch.arange(4, dtype=torch.float32) + 0.5) / 4
        temporal.pos_embed[0, 1:] = ramp[:, None]
        temporal.pos_embed[0, 0] = -7.0
    with caplog.at_level(logging.WARNING, logger="stamcli"):
        pos8 = temporal.position_embedding(8)
        pos2 = temporal.position_embedding(2)
        temporal.position_embedding(8)
    # linear interpolation of a linear ramp between sample centres stays on the ramp (clamped at the ends)
    expected8 = ((torch.arange(8) + 0.5) / 8).clamp(0.125, 0.875)
    torch.testing.assert_close(pos8[0, 1:, 0], expected8)
    torch.testing.assert_close(pos2[0, 1:, 3], torch.tensor([0.25, 0.75]))
    assert pos8[0, 0, 0].item() == -7.0 and pos8.shape == (1, 9, 64)
    assert temporal.position_embedding(4) is temporal.pos_embed
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "model was trained for 4 frames and runs on 8: interpolating its temporal position embedding (accuracy may drop)",
        "model was trained for 4 frames and runs on 2: interpolating its temporal position embedding (accuracy may drop)",
    ]
    with torch.inference_mode():
        assert tiny_model(torch.rand(2, 8, 3, 32, 32)).shape == (2, 5)
        assert tiny_model(torch.rand(1, 1, 3, 32, 32)).shape == (1, 5)


def test_wrong_input_shape_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"expected videos of shape \(videos, frames, 3, 32, 32\), got \(4, 3, 32, 32\)"):
        tiny_model(torch.rand(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"got \(1, 4, 3, 64, 64\)"):
        tiny_model(torch.rand(1, 4, 3, 64, 64))


def test_any_timm_vit_backbone_with_its_own_dims():
    model = create_model("vit_small_patch16_224", frames=2, num_classes=3, img_size=32, depth=1)
    assert (model.config.embed_dim, model.config.num_heads, model.config.depth) == (384, 6, 1)
    assert model.config.patch_size == 16 and model.config.mlp_ratio == 4.0
    assert model(torch.rand(1, 2, 3, 32, 32)).shape == (1, 3)
    assert model.labels == ["class_0", "class_1", "class_2"]


def test_400_way_models_get_kinetics_names_by_default():
    model = create_model("vit_tiny_patch16_224", frames=2, num_classes=400, img_size=32, depth=1)
    assert model.labels[0] == "abseiling" and model.labels[-1] == "zumba" and len(model.labels) == 400


def test_unknown_and_non_vit_backbones_are_clear_errors():
    with pytest.raises(StamError, match=r"unknown timm backbone 'vit_nope'.*vit_base_patch16_224"):
        create_model("vit_nope", img_size=32)
    with pytest.raises(StamError, match=r"backbone 'resnet18' is not a timm VisionTransformer \(.*img_size"):
        create_model("resnet18")


def test_config_rejects_unknown_fields_and_label_count_mismatch():
    with pytest.raises(StamError, match=r"unknown architecture field\(s\): colour; valid fields: .*backbone"):
        STAMConfig.from_dict({"colour": 1})
    with pytest.raises(StamError, match=r"2 labels given for a model with 5 outputs"):
        make_tiny_model(labels=["a", "b"])
    with pytest.raises(StamError, match=r"temporal heads \(7\) must divide the embedding size \(64\)"):
        make_tiny_model(temporal_heads=7)


def test_adapting_a_model_to_new_labels_frames_and_input_size(tiny_model, caplog):
    old_positions = tiny_model.temporal.pos_embed.detach().clone()
    with caplog.at_level(logging.WARNING, logger="stamcli"):
        tiny_model.set_frames(8)
    assert caplog.records == []  # a deliberate change, not a runtime mismatch
    assert tiny_model.config.frames == tiny_model.temporal.frames == 8
    torch.testing.assert_close(tiny_model.temporal.pos_embed[:, :1], old_positions[:, :1])
    assert tiny_model.temporal.pos_embed.shape == (1, 9, 64) and tiny_model.temporal.pos_embed.requires_grad
    tiny_model.set_img_size(48)
    assert tiny_model.config.img_size == 48 and tiny_model.spatial.pos_embed.shape == (1, 1 + 9, 64)
    tiny_model.reset_head(["open", "close"])
    assert tiny_model.labels == ["open", "close"] and tiny_model.config.num_classes == 2
    assert torch.equal(tiny_model.head.bias, torch.zeros(2))
    with torch.inference_mode():
        assert tiny_model(torch.rand(2, 8, 3, 48, 48)).shape == (2, 2)


def test_both_transformers_run_fused_attention(monkeypatch):
    """The spatial ViT (timm's fused_attn) calls scaled_dot_product_attention; the temporal encoder
    runs PyTorch's fused encoder-layer kernel at inference, and where that fast path is off (CUDA
    autocast, gradients) nn.MultiheadAttention calls scaled_dot_product_attention too."""
    import torch.nn.functional as F

    from stamcli.device import autocast_for

    model = make_tiny_model(depth=2, temporal_layers=3)
    real_sdpa, real_layer, calls = F.scaled_dot_product_attention, torch._transformer_encoder_layer_fwd, []

    def sdpa(q, *args, **kwargs):
        calls.append(tuple(q.shape))
        return real_sdpa(q, *args, **kwargs)

    def fused_layer(*args, **kwargs):
        calls.append("fused encoder layer")
        return real_layer(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", fused_layer)
    videos = torch.rand(2, 4, 3, 32, 32)
    spatial = [(8, 2, 5, 32)] * 2  # (videos * frames, heads, 1 + patches, head dim)
    with torch.inference_mode():
        model(videos)
    assert calls == spatial + ["fused encoder layer"] * 3
    calls.clear()
    with autocast_for(torch.device("cpu"), "bf16"):  # gradients on: the fast path is off
        model(videos)
    assert calls == spatial + [(2, 8, 5, 8)] * 3  # (videos, heads, 1 + frames, head dim)


def test_cpu_passes_run_the_spatial_vit_on_chunks_of_frames(tiny_model, monkeypatch):
    """5 videos x 4 frames = 20 frames: 8 + 8 + 4 with the default chunk, 6 + 6 + 6 + 2 with 6, 20 with
    None, and the same numbers every way."""
    assert STAM.frame_chunk == CPU_FRAME_CHUNK == 8
    seen = []
    forward_features = tiny_model.spatial.forward_features
    monkeypatch.setattr(tiny_model.spatial, "forward_features", lambda x: seen.append(len(x)) or forward_features(x))
    videos = torch.rand(5, 4, 3, 32, 32)
    results = {}
    for chunk, sizes in ((CPU_FRAME_CHUNK, [8, 8, 4]), (6, [6, 6, 6, 2]), (None, [20]), (32, [20])):
        seen.clear()
        tiny_model.frame_chunk = chunk
        with torch.inference_mode():
            results[chunk] = tiny_model.embed_with_frames(videos)
        assert seen == sizes, chunk
    for chunk in (CPU_FRAME_CHUNK, 6, 32):
        torch.testing.assert_close(results[chunk], results[None], atol=1e-5, rtol=1e-5)


def test_chunked_frames_train_like_one_pass():
    """Gradients through the chunked spatial pass equal those of one pass."""
    grads = {}
    for chunk in (3, None):
        model = make_tiny_model(seed=4, temporal_dropout=0.0).train()  # deterministic in training mode
        model.frame_chunk = chunk
        model(torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads[chunk] = model.spatial.patch_embed.proj.weight.grad
    torch.testing.assert_close(grads[3], grads[None], atol=1e-5, rtol=1e-4)


def test_pre_norm_temporal_encoder_has_the_same_parameters_in_another_form():
    post = make_tiny_model(seed=4, temporal_layers=2)
    pre = make_tiny_model(seed=4, temporal_layers=2, temporal_norm="pre")
    assert [layer.norm_first for layer in pre.temporal.transformer_enc.layers] == [True, True]
    assert [layer.norm_first for layer in post.temporal.transformer_enc.layers] == [False, False]
    assert {k: v.shape for k, v in pre.state_dict().items()} == {k: v.shape for k, v in post.state_dict().items()}
    pre.load_state_dict(post.state_dict())
    with torch.no_grad():
        for model in (pre, post):
            model.temporal.pos_embed.normal_(generator=torch.Generator().manual_seed(0))
        videos = torch.rand(2, 4, 3, 32, 32)
        assert (pre(videos) - post(videos)).abs().max() > 1e-3  # same weights, another network
    with pytest.raises(StamError, match=r"temporal_norm must be one of post, pre, not 'middle'"):
        make_tiny_model(temporal_norm="middle")
    with pytest.raises(StamError, match=r"temporal_layers must be at least 1, not 0"):
        make_tiny_model(temporal_layers=0)


def test_reset_temporal_builds_a_new_encoder_and_keeps_the_rest(tiny_model):
    spatial = {k: v.clone() for k, v in tiny_model.spatial.state_dict().items()}
    tiny_model.reset_temporal(3, "pre")
    assert (tiny_model.config.temporal_layers, tiny_model.config.temporal_norm) == (3, "pre")
    assert len(tiny_model.temporal.transformer_enc.layers) == 3
    assert tiny_model.temporal.transformer_enc.layers[0].norm_first
    assert tiny_model.temporal.pos_embed.shape == (1, 5, 64) and tiny_model.temporal.frames == 4
    assert all(torch.equal(v, tiny_model.spatial.state_dict()[k]) for k, v in spatial.items())
    with pytest.raises(StamError, match="temporal_norm must be one of"):
        tiny_model.reset_temporal(norm="sideways")
    assert tiny_model.config.temporal_norm == "pre"  # a refused change leaves the model as it was
    with torch.inference_mode():
        assert tiny_model(torch.rand(1, 4, 3, 32, 32)).shape == (1, 5)


def test_input_norm_standardises_frame_embeddings_before_the_temporal_encoder():
    model = make_tiny_model(seed=2, temporal_norm="pre", temporal_input_norm=True)
    norm = model.temporal.input_norm
    assert isinstance(norm, nn.BatchNorm1d) and norm.num_features == 64
    assert make_tiny_model().temporal.input_norm is None  # not in the authors' encoder
    extra = {k for k in model.state_dict()} - {k for k in make_tiny_model().state_dict()}
    assert extra == {"temporal.input_norm." + name for name in
                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert 0.2 < model.temporal.pos_embed.std().item() < 0.4  # positions start visible next to unit-scale frames
    seen = []
    norm.register_forward_hook(lambda module, inputs, output: seen.append(output.detach()))
    frames = torch.randn(4, 4, 3, 32, 32).sigmoid()
    model.train()
    model(frames)
    standardised = seen[-1]  # (videos x frames, channels), over the batch's 16 frames
    assert standardised.shape == (16, 64)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardised.var(0, unbiased=False), torch.ones(64), atol=0.02, rtol=0)  # eps
    assert norm.num_batches_tracked.item() == 1 and norm.running_mean.abs().sum() > 0
    model.eval()  # running statistics: a video's logits do not depend on its batch
    with torch.no_grad():
        together = model(frames)
        alone = torch.cat([model(frames[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_the_head_computes_in_float32_under_bf16_autocast():
    # A bf16 head rounds logits to 8 significant bits: with 400 peaked classes the scores move by
    # about 0.04 here and top-5 scores tie. The head must compute in float32 on the embedding it gets.
    model = make_tiny_model(num_classes=400)
    with torch.no_grad():
        model.head.weight.mul_(30)  # a peaked softmax, as a trained model's
    videos = torch.rand(16, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(videos)
        embedding = model.forward_embedding(videos)
        frozen_head_logits = model.head(model.temporal(model.embed_frames(videos)))  # as fine-tuning's TemporalHead
    assert logits.dtype == frozen_head_logits.dtype == torch.float32
    exact = torch.nn.functional.linear(embedding.float(), model.head.weight, model.head.bias)
    assert (logits - exact).abs().max() < 1e-5
    assert (frozen_head_logits - exact).abs().max() < 1e-5
    top5 = logits.softmax(-1).topk(5).values
    assert (top5[:, :-1] > top5[:, 1:]).all(), "tied top-5 scores"
    model.reset_head(["a", "b"])  # a new head for fine-tuning computes in float32 too
    assert isinstance(model.head, ClassifierHead)
