"""Tests for the auxiliary output heads (thesis Sections 4.3 and 4.6)."""

from __future__ import annotations

import hashlib
import itertools

import pytest
import torch
from torch import Tensor, nn

from lightning_modules.nets import EmbeddingHead, MMDenseNet, MultiHeadMMDenseNet
from lightning_modules.nets.mmdensenet import DenseBlock

SMALL_F = 64
FRAMES = 8
BASELINE_PARAMS = 268_929
SECOND_HEADS = (None, "out_block", "decoder")
EMBEDDING_SPLITS = (None, "pre_block", "post_block")
COMBINATIONS = list(itertools.product(SECOND_HEADS, EMBEDDING_SPLITS))

# State-dict keys of the default MMDenseNet, recorded BEFORE the encode/decode refactor:
# 428 keys whose "\n"-joined text has this SHA-256. Existing checkpoints rely on them.
DEFAULT_KEY_COUNT = 428
DEFAULT_KEYS_SHA256 = "dfa842dee04e77a7646c2c5c9c00da6f2de2b8bc67d6ed908e1e08206045ca9b"

# Extra (training-only) parameters of each head over the 268,929 baseline.
OUT_BLOCK_EXTRA = 1_829  # DenseBlock(22, k=4, L=2) = 1,824 + biased 1x1 conv 4 -> 1 = 5
DECODER_EXTRA = 131_528 + OUT_BLOCK_EXTRA  # band decoders 100,016 + 26,040 + 5,472
EMBEDDING_EXTRA = {"pre_block": 44 + 22 * 20 * 9, "post_block": 8 + 4 * 20 * 9}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _input(batch: int = 2) -> Tensor:
    return torch.rand(batch, 1, SMALL_F, FRAMES)


@pytest.mark.parametrize(("second_head", "embedding_split"), COMBINATIONS)
def test_output_keys_and_shapes(second_head: str | None, embedding_split: str | None) -> None:
    model = MultiHeadMMDenseNet(
        second_head=second_head, embedding_split=embedding_split, embedding_dim=7
    )
    with torch.no_grad():
        out = model(_input())
    expected = {"main"}
    if second_head is not None:
        expected.add("second")
    if embedding_split is not None:
        expected.add("embedding")
    assert set(out) == expected
    assert out["main"].shape == (2, 1, SMALL_F, FRAMES)
    if "second" in out:
        assert out["second"].shape == (2, 1, SMALL_F, FRAMES)
    if "embedding" in out:
        assert out["embedding"].shape == (2, 7, SMALL_F, FRAMES)


@pytest.mark.parametrize("embedding_split", ["pre_block", "post_block"])
def test_embeddings_unit_norm_and_finite_for_silence(embedding_split: str) -> None:
    model = MultiHeadMMDenseNet(embedding_split=embedding_split)
    with torch.no_grad():
        emb = model(_input())["embedding"]
    assert emb.shape[1] == 20
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, SMALL_F, FRAMES))

    silent = torch.zeros(2, 1, SMALL_F, FRAMES, requires_grad=True)
    out = model(silent)
    assert all(torch.isfinite(v).all() for v in out.values())
    out["embedding"].sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_embedding_head_is_one_composite_layer_with_eps() -> None:
    head = EmbeddingHead(22, 20)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 1 and len(norms) == 1
    assert convs[0].kernel_size == (3, 3) and convs[0].padding == (1, 1)
    assert convs[0].bias is None and convs[0].out_channels == 20
    with torch.no_grad():
        assert torch.count_nonzero(head.eval()(torch.zeros(1, 22, 4, 4))) == 0


@pytest.mark.parametrize(("second_head", "embedding_split"), COMBINATIONS)
def test_main_equals_plain_mmdensenet(second_head: str | None, embedding_split: str | None) -> None:
    model = MultiHeadMMDenseNet(
        output_activation="none", second_head=second_head, embedding_split=embedding_split
    )
    # Give BatchNorm non-trivial running statistics so eval mode is really compared.
    with torch.no_grad():
        model(_input(4))
    plain = MMDenseNet(output_activation="none")
    plain.load_state_dict(model.inference_net().state_dict())
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["main"], plain.eval()(x), rtol=0, atol=0)
        torch.testing.assert_close(model.train()(x)["main"], plain.train()(x), rtol=0, atol=0)


@pytest.mark.parametrize("second_head", ["out_block", "decoder"])
def test_plain_checkpoint_loads_into_main_path(second_head: str) -> None:
    plain = MMDenseNet().eval()
    model = MultiHeadMMDenseNet(second_head=second_head)
    model.inference_net().load_state_dict(plain.state_dict())  # strict: same keys
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["main"], plain(x), rtol=0, atol=0)


@pytest.mark.parametrize(("second_head", "embedding_split"), COMBINATIONS)
def test_inference_net_is_the_plain_model(
    second_head: str | None, embedding_split: str | None
) -> None:
    model = MultiHeadMMDenseNet(second_head=second_head, embedding_split=embedding_split)
    net = model.inference_net()
    assert n_params(net) == BASELINE_PARAMS
    assert list(net.state_dict()) == list(MMDenseNet().state_dict())
    # Shares the weights: every inference parameter is one of the model's, none is a copy.
    assert param_ids(net) <= param_ids(model)
    x = _input()
    model.eval()
    with torch.no_grad():
        main = model(x)["main"]
        inferred = net(x)
    assert isinstance(inferred, Tensor)
    torch.testing.assert_close(inferred, main, rtol=0, atol=0)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
        assert not torch.equal(model(x)["main"], main)  # an update is seen by the model


@pytest.mark.parametrize(("second_head", "embedding_split"), COMBINATIONS)
def test_extra_parameter_counts(second_head: str | None, embedding_split: str | None) -> None:
    model = MultiHeadMMDenseNet(second_head=second_head, embedding_split=embedding_split)
    extra = {None: 0, "out_block": OUT_BLOCK_EXTRA, "decoder": DECODER_EXTRA}[second_head]
    extra += EMBEDDING_EXTRA.get(embedding_split, 0)
    assert n_params(model) - BASELINE_PARAMS == extra


def test_out_block_head_is_disjoint_from_main_final_block() -> None:
    model = MultiHeadMMDenseNet(second_head="out_block")
    head = nn.ModuleList([model.second_block, model.second_output_conv])
    main_head = nn.ModuleList([model.main.final_block, model.main.output_conv])
    assert not param_ids(head) & param_ids(main_head)
    assert not param_ids(head) & param_ids(model.main)
    assert n_params(head) == n_params(main_head) == OUT_BLOCK_EXTRA
    assert n_params(model.second_block) == n_params(DenseBlock(22, 4, 2))


def test_decoder_split_duplicates_decoders() -> None:
    model = MultiHeadMMDenseNet(second_head="decoder")
    bands = [model.main.low_band, model.main.high_band, model.main.full_band]
    decoder_params = 0
    for band in bands:
        assert band.n_decoders == 2
        first = nn.ModuleList(band.decoder_parts(0))
        second = nn.ModuleList(band.decoder_parts(1))
        assert not param_ids(first) & param_ids(second)
        assert n_params(first) == n_params(second)
        decoder_params += n_params(first)
    head = nn.ModuleList([model.second_block, model.second_output_conv])
    assert n_params(model) - BASELINE_PARAMS == decoder_params + n_params(head)
    assert decoder_params + n_params(head) == DECODER_EXTRA


def _grads(model: nn.Module, loss: Tensor) -> dict[str, bool]:
    """Which parameters get a non-zero gradient from ``loss`` alone."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {
        name: p.grad is not None and bool(torch.count_nonzero(p.grad))
        for name, p in model.named_parameters()
    }


@pytest.mark.parametrize(("second_head", "embedding_split"), COMBINATIONS)
def test_each_head_trains_the_shared_body(
    second_head: str | None, embedding_split: str | None
) -> None:
    model = MultiHeadMMDenseNet(
        output_activation="none", second_head=second_head, embedding_split=embedding_split
    )
    x = _input()
    shared_encoder = [
        f"main.{band}.{part}"
        for band in ("low_band", "high_band", "full_band")
        for part in (
            "input_conv.weight",
            "encoder.0.layers.0.conv.weight",
            "bottleneck.layers.0.conv.weight",
        )
    ]
    decoder0 = [f"main.{b}.decoder.0.layers.0.conv.weight" for b in ("low_band", "full_band")]
    extra_decoder = [
        f"main.{b}.extra_decoders.0.0.layers.0.conv.weight" for b in ("low_band", "full_band")
    ]

    for key in model(x):
        out = model(x)[key]
        grads = _grads(model, (out * torch.randn_like(out)).sum())
        assert all(grads[name] for name in shared_encoder), key
        if key == "main":
            assert grads["main.final_block.layers.0.conv.weight"]
            assert not any(grads[n] for n in grads if not n.startswith("main.")), key
        elif key == "second":
            assert grads["second_block.layers.0.conv.weight"]
            assert not grads["main.final_block.layers.0.conv.weight"]
            assert not grads["main.output_conv.weight"]
            if second_head == "decoder":
                assert all(grads[n] for n in extra_decoder)
                assert not any(grads[n] for n in decoder0)
            else:
                assert all(grads[n] for n in decoder0)
        elif key == "embedding":
            assert grads["embedding.layer.conv.weight"]
            assert all(grads[n] for n in decoder0)
            assert not grads["main.output_conv.weight"]
            post = embedding_split == "post_block"
            assert grads["main.final_block.layers.0.conv.weight"] == post
        if second_head == "decoder" and key != "second":
            assert not any(grads[n] for n in extra_decoder), key


def test_second_activation() -> None:
    model = MultiHeadMMDenseNet(
        output_activation="relu", second_head="out_block", second_activation="none"
    )
    with torch.no_grad():
        out = model(_input())
    assert (out["main"] >= 0).all()
    assert (out["second"] < 0).any()
    assert MultiHeadMMDenseNet(second_head="out_block").second_activation == "relu"
    sig = MultiHeadMMDenseNet(second_head="decoder", second_activation="sigmoid")
    with torch.no_grad():
        second = sig(_input())["second"]
    assert ((second > 0) & (second < 1)).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"second_head": "encoder"},
        {"embedding_split": "post_output"},
        {"second_activation": "none"},  # no second head to apply it to
        {"second_head": "out_block", "second_activation": "tanh"},
        {"output_activation": "tanh"},
        {"embedding_split": "pre_block", "embedding_dim": 0},
    ],
)
def test_invalid_configurations(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MultiHeadMMDenseNet(**kwargs)


@pytest.mark.parametrize(
    ("second_head", "embedding_split"), [("out_block", "pre_block"), (None, "post_block")]
)
def test_initialisation(second_head: str, embedding_split: str) -> None:
    torch.manual_seed(3)
    model = MultiHeadMMDenseNet(second_head=second_head, embedding_split=embedding_split)
    torch.manual_seed(3)
    plain = MMDenseNet()
    # Same seed -> the main path starts from the baseline's initial weights.
    for a, b in zip(model.main.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    if second_head is not None:
        assert torch.count_nonzero(model.second_output_conv.bias) == 0
        conv = model.second_block.layers[1].conv  # fan_in = (22 + 4) * 9 = 234
        assert conv.weight.std().item() == pytest.approx((2 / 234) ** 0.5, rel=0.15)
    emb = model.embedding.layer.conv  # fan_in = 22 * 9 (pre) or 4 * 9 (post)
    fan_in = emb.in_channels * 9
    assert emb.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)


def test_default_state_dict_keys_unchanged() -> None:
    keys = list(MMDenseNet().state_dict())
    assert len(keys) == DEFAULT_KEY_COUNT
    assert "low_band.decoder.2.layers.3.conv.weight" in keys
    assert "full_band.upsamples.0.conv.weight" in keys
    assert not any("extra" in k for k in keys)
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    assert digest == DEFAULT_KEYS_SHA256, keys
