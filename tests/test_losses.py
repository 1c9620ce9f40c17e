"""Tests for lightning_modules.separators.losses: deep clustering, attractors, chimera loss."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.separators.losses import (
    attractor_masks,
    attractors,
    chimera_loss,
    deep_clustering_loss,
    dominant_source_labels,
    flatten_embeddings,
    magnitude_weights,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit_embeddings(b: int, tf: int, k: int, seed: int, dtype=F64) -> torch.Tensor:
    v = torch.randn(b, tf, k, generator=_gen(seed), dtype=dtype)
    return torch.nn.functional.normalize(v, dim=-1)


def _one_hot_labels(b: int, tf: int, n: int, seed: int, dtype=F64) -> torch.Tensor:
    idx = torch.randint(0, n, (b, tf), generator=_gen(seed))
    return torch.nn.functional.one_hot(idx, n).to(dtype)


def _brute_force_dc(v: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Batch mean of ||W^1/2 (V V^T - Y Y^T) W^1/2||_F^2 with explicit TF x TF affinities and
    per-example weights normalised to sum to 1 (uniform 1/TF when ``w`` is None)."""
    b, tf, _ = v.shape
    losses = []
    for i in range(b):
        wi = torch.ones(tf, dtype=v.dtype) if w is None else w[i].to(v.dtype)
        total = wi.sum()
        p = wi / total if total > 0 else torch.zeros_like(wi)
        half = torch.diag(p.sqrt())
        diff = v[i] @ v[i].T - y[i] @ y[i].T  # (TF, TF) affinity difference
        losses.append(torch.linalg.matrix_norm(half @ diff @ half, ord="fro") ** 2)
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------------------------
# deep_clustering_loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "tf", "k", "n"), [(1, 7, 3, 2), (2, 30, 20, 4), (3, 64, 5, 2), (4, 12, 2, 6)]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_dc_matches_brute_force(b: int, tf: int, k: int, n: int, weighted: bool) -> None:
    seed = 100 * b + tf + k + n
    v = _unit_embeddings(b, tf, k, seed)
    y = _one_hot_labels(b, tf, n, seed + 1)
    w = torch.rand(b, tf, generator=_gen(seed + 2), dtype=F64) if weighted else None
    got = deep_clustering_loss(v, y, w)
    assert got.shape == ()
    torch.testing.assert_close(got, _brute_force_dc(v, y, w), rtol=1e-12, atol=1e-14)


def test_dc_magnitude_weights_is_eq_4_9_without_renormalisation() -> None:
    """magnitude_weights already sum to 1, so the loss is the literal eq. 4.9 with W = diag(w)."""
    mix = torch.rand(2, 5, 6, generator=_gen(0), dtype=F64) * 3.0
    w = magnitude_weights(mix)
    v = _unit_embeddings(2, 30, 4, 1)
    y = _one_hot_labels(2, 30, 3, 2)
    literal = []
    for i in range(2):
        half = torch.diag(w[i].sqrt())
        diff = v[i] @ v[i].T - y[i] @ y[i].T
        literal.append((half @ diff @ half).square().sum())
    torch.testing.assert_close(
        deep_clustering_loss(v, y, w), torch.stack(literal).mean(), rtol=1e-12, atol=0
    )


def test_dc_weight_scale_invariant_and_none_is_uniform() -> None:
    v = _unit_embeddings(2, 20, 4, 3)
    y = _one_hot_labels(2, 20, 3, 4)
    w = torch.rand(2, 20, generator=_gen(5), dtype=F64)
    scaled = w * torch.tensor([[7.0], [0.01]], dtype=F64)
    torch.testing.assert_close(deep_clustering_loss(v, y, w), deep_clustering_loss(v, y, scaled))
    torch.testing.assert_close(
        deep_clustering_loss(v, y), deep_clustering_loss(v, y, torch.ones(2, 20, dtype=F64))
    )


def test_dc_does_not_scale_with_tf() -> None:
    """Repeating every bin 4 times leaves the (mean over pairs) value unchanged."""
    v = _unit_embeddings(1, 10, 3, 6)
    y = _one_hot_labels(1, 10, 2, 7)
    torch.testing.assert_close(
        deep_clustering_loss(v.repeat(1, 4, 1), y.repeat(1, 4, 1)), deep_clustering_loss(v, y)
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_dc_zero_for_perfect_embeddings(weighted: bool) -> None:
    y = _one_hot_labels(3, 40, 4, 8)
    w = torch.rand(3, 40, generator=_gen(9), dtype=F64) if weighted else None
    assert abs(deep_clustering_loss(y.clone(), y, w).item()) < 1e-14
    # Any orthonormal embedding of the labels into K > N dimensions is just as perfect.
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=_gen(10), dtype=F64))
    v = y @ q[:4]  # (3, 40, 6), rows orthonormal per source
    assert abs(deep_clustering_loss(v, y, w).item()) < 1e-13
    # ... while a wrong assignment is not.
    assert deep_clustering_loss(y.roll(1, dims=1), y, w).item() > 1e-3


def test_dc_invariant_to_source_permutation() -> None:
    v = _unit_embeddings(2, 25, 5, 11)
    y = _one_hot_labels(2, 25, 4, 12)
    w = torch.rand(2, 25, generator=_gen(13), dtype=F64)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        deep_clustering_loss(v, y[..., perm], w), deep_clustering_loss(v, y, w)
    )


def test_dc_silent_source_matches_brute_force() -> None:
    """Example 0 has no bin dominated by source 1 (e.g. silent vocals): a zero label column."""
    v = _unit_embeddings(2, 24, 6, 14)
    idx = torch.randint(0, 3, (2, 24), generator=_gen(15))
    idx[0][idx[0] == 1] = 2
    y = torch.nn.functional.one_hot(idx, 3).to(F64)
    assert y[0, :, 1].sum() == 0
    w = torch.rand(2, 24, generator=_gen(16), dtype=F64)
    for weights in (None, w):
        got = deep_clustering_loss(v, y, weights)
        assert torch.isfinite(got)
        torch.testing.assert_close(got, _brute_force_dc(v, y, weights), rtol=1e-12, atol=1e-14)


def test_dc_silent_source_from_dominant_labels() -> None:
    """End to end: an all-zero source stem never wins a bin, and the loss stays finite."""
    src = torch.rand(2, 3, 4, 5, generator=_gen(17), dtype=F64)
    src[1, 0] = 0.0  # silent bass in example 1
    y = dominant_source_labels(src)
    assert y[1, :, 0].sum() == 0
    v = _unit_embeddings(2, 20, 4, 18).requires_grad_(True)
    loss = deep_clustering_loss(v, y, magnitude_weights(src.sum(1)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(v.grad).all()
    torch.testing.assert_close(
        loss.detach(), _brute_force_dc(v.detach(), y, magnitude_weights(src.sum(1)))
    )


def test_dc_all_zero_weights_example_contributes_zero() -> None:
    v = _unit_embeddings(2, 16, 4, 19).requires_grad_(True)
    y = _one_hot_labels(2, 16, 2, 20)
    w = torch.rand(2, 16, generator=_gen(21), dtype=F64)
    w[0] = 0.0
    loss = deep_clustering_loss(v, y, w)
    assert torch.isfinite(loss)
    other = deep_clustering_loss(v[1:], y[1:], w[1:])
    torch.testing.assert_close(loss, other / 2)  # example 0 adds 0 to the batch mean
    torch.testing.assert_close(loss, _brute_force_dc(v.detach(), y, w))
    loss.backward()
    assert torch.isfinite(v.grad).all()
    assert v.grad[0].abs().max() == 0 and v.grad[1].abs().max() > 0
    # A silent mixture yields such weights through magnitude_weights.
    silent = magnitude_weights(torch.zeros(1, 4, 4, dtype=F64))
    assert deep_clustering_loss(v[:1], y[:1], silent).item() == 0.0


def test_dc_gradient_finite_and_flows() -> None:
    raw = torch.randn(2, 3, 6, 5, generator=_gen(22), requires_grad=True)  # (B, K, F, T)
    v = torch.nn.functional.normalize(flatten_embeddings(raw), dim=-1)
    src = torch.rand(2, 2, 6, 5, generator=_gen(23))
    w = magnitude_weights(src.sum(1))
    w[0, :7] = 0.0  # some zero-weight bins
    loss = deep_clustering_loss(v, dominant_source_labels(src), w)
    loss.backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all()
    assert raw.grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dc_dtype_device_and_bool_labels(device: str, dtype: torch.dtype) -> None:
    v = _unit_embeddings(2, 18, 4, 24, dtype=dtype).to(device)
    y = _one_hot_labels(2, 18, 3, 25, dtype=F64)
    w = torch.rand(2, 18, generator=_gen(26), dtype=F64)
    got = deep_clustering_loss(v, y.bool().to(device), w.to(device))
    assert got.dtype == dtype and got.device.type == device
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    expected = _brute_force_dc(v.double().cpu(), y, w)
    torch.testing.assert_close(got.double().cpu(), expected, rtol=tol, atol=tol)


def test_dc_rejects_bad_shapes() -> None:
    v = _unit_embeddings(2, 10, 3, 27)
    y = _one_hot_labels(2, 10, 2, 28)
    with pytest.raises(ValueError):
        deep_clustering_loss(v, y[:, :9])
    with pytest.raises(ValueError):
        deep_clustering_loss(v, y, torch.ones(2, 9, dtype=F64))
    with pytest.raises(ValueError):
        deep_clustering_loss(v[0], y[0])


def test_dc_adam_reduces_loss() -> None:
    torch.manual_seed(0)
    src = torch.rand(2, 3, 8, 6, generator=_gen(29))
    y = dominant_source_labels(src)
    w = magnitude_weights(src.sum(1))
    raw = torch.nn.Parameter(torch.randn(2, 48, 5, generator=_gen(30)))
    opt = torch.optim.Adam([raw], lr=0.1)

    def loss_fn() -> torch.Tensor:
        return deep_clustering_loss(torch.nn.functional.normalize(raw, dim=-1), y, w)

    start = loss_fn().item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.25 * start


# --------------------------------------------------------------------------------------------
# Weights, labels and flattening order
# --------------------------------------------------------------------------------------------


def test_magnitude_weights() -> None:
    mix = torch.rand(3, 4, 5, generator=_gen(31), dtype=F64)
    mix[1] = 0.0  # silent example
    w = magnitude_weights(mix)
    assert w.shape == (3, 20)
    assert torch.isfinite(w).all() and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    # Row f*T + t holds bin (f, t).
    torch.testing.assert_close(w[2, 2 * 5 + 3], mix[2, 2, 3] / mix[2].sum())
    # Complex STFT input uses the magnitude.
    phase = torch.exp(1j * torch.rand(3, 4, 5, generator=_gen(32), dtype=F64))
    torch.testing.assert_close(magnitude_weights(mix * phase), w)


def test_dominant_source_labels_one_hot_and_ties() -> None:
    src = torch.tensor(
        [
            [[[0.1, 0.5, 0.3]]],  # source 0
            [[[0.9, 0.5, 0.0]]],  # source 1
            [[[0.2, 0.5, 0.3]]],  # source 2
        ],
        dtype=F64,
    ).reshape(1, 3, 1, 3)  # (B=1, N=3, F=1, T=3)
    y = dominant_source_labels(src)
    assert y.shape == (1, 3, 3) and y.dtype == F64
    expected = torch.tensor([[0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=F64)  # 3-way tie -> 0,
    torch.testing.assert_close(y[0], expected)  # 0/2 tie at 0.3 -> 0
    silent = dominant_source_labels(torch.zeros(2, 4, 3, 2))
    assert (silent[..., 0] == 1).all() and silent.sum(-1).eq(1).all()
    rand = dominant_source_labels(torch.randn(2, 4, 3, 5, generator=_gen(33)))
    assert rand.sum(-1).eq(1).all() and set(rand.unique().tolist()) == {0.0, 1.0}
    # Power or complex input gives the same labels as magnitudes.
    mags = torch.rand(2, 4, 3, 5, generator=_gen(34), dtype=F64)
    torch.testing.assert_close(dominant_source_labels(mags.square()), dominant_source_labels(mags))
    torch.testing.assert_close(dominant_source_labels(-1j * mags), dominant_source_labels(mags))


def test_flatten_order_consistent() -> None:
    """F != T so a transposed flattening would be caught."""
    b, n, f, t = 2, 3, 4, 7
    src = torch.rand(b, n, f, t, generator=_gen(35), dtype=F64)
    # Embedding of bin (f, t) = the one-hot of its dominant source, built in conv layout.
    winner = src.argmax(1)  # (B, F, T)
    conv_layout = torch.nn.functional.one_hot(winner, n).permute(0, 3, 1, 2).to(F64)
    y = dominant_source_labels(src)
    v = flatten_embeddings(conv_layout)
    assert v.shape == (b, f * t, n)
    torch.testing.assert_close(v, y)
    assert abs(deep_clustering_loss(v, y, magnitude_weights(src.sum(1))).item()) < 1e-14
    # The mixture magnitude as a 1-channel "embedding" lines up with the weights.
    mix = src.sum(1)
    flat_mix = flatten_embeddings(mix.unsqueeze(1))[..., 0]
    torch.testing.assert_close(magnitude_weights(mix), flat_mix / flat_mix.sum(1, keepdim=True))
    # Explicit index check: row f*T + t is bin (f, t).
    raw = torch.randn(b, 5, f, t, generator=_gen(36))
    torch.testing.assert_close(flatten_embeddings(raw)[1, 2 * t + 6], raw[1, :, 2, 6])
    with pytest.raises(ValueError):
        flatten_embeddings(raw[0])


# --------------------------------------------------------------------------------------------
# Attractors
# --------------------------------------------------------------------------------------------


def test_attractors_are_mean_embeddings_per_source() -> None:
    v = _unit_embeddings(2, 30, 4, 37)
    y = _one_hot_labels(2, 30, 3, 38)
    w = torch.rand(2, 30, generator=_gen(39), dtype=F64)
    a = attractors(v, y)
    aw = attractors(v, y, w)
    assert a.shape == (2, 4, 3)
    for i in range(2):
        for s in range(3):
            sel = y[i, :, s].bool()
            torch.testing.assert_close(a[i, :, s], v[i, sel].mean(0))
            expected = (w[i, sel, None] * v[i, sel]).sum(0) / w[i, sel].sum()
            torch.testing.assert_close(aw[i, :, s], expected)


def test_attractors_missing_source_is_zero_and_finite() -> None:
    v = _unit_embeddings(2, 12, 3, 40).requires_grad_(True)
    idx = torch.randint(0, 2, (2, 12), generator=_gen(41))  # source 2 never dominates
    y = torch.nn.functional.one_hot(idx, 3).to(F64)
    w = torch.rand(2, 12, generator=_gen(42), dtype=F64)
    w[1] = 0.0  # all-zero weights: every source "missing" in example 1
    for weights in (None, w):
        a = attractors(v, y, weights)
        assert torch.isfinite(a).all()
        assert a[:, :, 2].abs().max() == 0
        m = attractor_masks(v, a)
        assert torch.isfinite(m).all()
        (a.sum() + m.square().sum()).backward()
        assert torch.isfinite(v.grad).all()
        v.grad = None
    assert attractors(v, y, w)[1].abs().max() == 0


def test_attractor_masks_softmax_over_sources() -> None:
    v = _unit_embeddings(3, 20, 5, 43)
    y = _one_hot_labels(3, 20, 4, 44)
    a = attractors(v, y)
    m = attractor_masks(v, a)
    assert m.shape == (3, 20, 4)
    assert (m > 0).all()
    torch.testing.assert_close(m.sum(-1), torch.ones(3, 20, dtype=F64))
    i, tf, s = 1, 7, 2
    scores = v[i, tf] @ a[i]
    torch.testing.assert_close(m[i, tf, s], scores.exp()[s] / scores.exp().sum())
    # Well-separated embeddings (V = Y scaled up) give near-binary masks equal to the labels.
    m_sharp = attractor_masks(10 * y, attractors(10 * y, y))
    torch.testing.assert_close(m_sharp, y, atol=1e-30, rtol=0)


# --------------------------------------------------------------------------------------------
# Chimera
# --------------------------------------------------------------------------------------------


def test_chimera_loss_weighting() -> None:
    dc = torch.tensor(2.0, requires_grad=True)
    main = torch.tensor(10.0, requires_grad=True)
    total = chimera_loss(dc, main, 0.2)
    torch.testing.assert_close(total, torch.tensor(0.2 * 2.0 + 0.8 * 10.0))
    total.backward()
    assert math.isclose(dc.grad.item(), 0.2, rel_tol=1e-6)
    assert math.isclose(main.grad.item(), 0.8, rel_tol=1e-6)
    assert chimera_loss(dc, main, 0.0).item() == 10.0
    assert chimera_loss(dc, main, 1.0).item() == 2.0
    assert chimera_loss(dc, main, 0.5).item() == 6.0


@pytest.mark.parametrize("alpha", [-0.1, 1.0001, float("nan"), float("inf")])
def test_chimera_loss_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError):
        chimera_loss(torch.tensor(1.0), torch.tensor(1.0), alpha)


# --------------------------------------------------------------------------------------------
# ChimeraSeparator's attractor loss (Table 4.13, "SA, Attractor loss")
# --------------------------------------------------------------------------------------------


def _brute_force_attractor_loss(
    mixture: list[list[float]],
    vocals: list[list[float]],
    embeddings: list[list[list[float]]],
    weighted: bool,
) -> float:
    """Eq. 4.10/4.11 by hand on real, non-negative spectrograms (so |X - S| = X - S): labels by
    the louder source per bin, attractors as (|X|-weighted if ``weighted``) means of the
    embeddings of each source's bins, the vocals' softmax mask, then the MSE of mask * |X|."""
    bins = [(f, t) for f in range(len(mixture)) for t in range(len(mixture[0]))]
    dominant = {
        b: 0 if vocals[b[0]][b[1]] >= mixture[b[0]][b[1]] - vocals[b[0]][b[1]] else 1 for b in bins
    }
    k = len(embeddings[0][0])
    centres = []
    for source in (0, 1):
        members = [b for b in bins if dominant[b] == source]
        weight = {b: mixture[b[0]][b[1]] if weighted else 1.0 for b in members}
        total = sum(weight.values())
        centres.append(
            [sum(weight[b] * embeddings[b[0]][b[1]][j] for b in members) / total for j in range(k)]
        )
    error = 0.0
    for f, t in bins:
        v = embeddings[f][t]
        scores = [sum(v[j] * centre[j] for j in range(k)) for centre in centres]
        mask = math.exp(scores[0]) / (math.exp(scores[0]) + math.exp(scores[1]))
        error += (mask * mixture[f][t] - vocals[f][t]) ** 2
    return error / len(bins)


def test_attractor_loss_follows_eq_4_10_unweighted_by_default_magnitude_as_option() -> None:
    from lightning_modules.nets import MultiHeadMMDenseNet
    from lightning_modules.separators.chimera import ChimeraSeparator

    # 2 x 2 bins; vocals dominate (0, 0) and (1, 1), whose mixture magnitudes 4 and 3 differ,
    # so |X| weighting moves the vocals' attractor from (0.5, -0.5) to (4/7, -3/7).
    mixture = [[4.0, 1.0], [2.0, 3.0]]
    vocals = [[3.0, 0.0], [0.5, 2.0]]
    embeddings = [[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.0, -1.0]]]  # [f][t] -> (K = 2)
    as_tensor = torch.tensor
    mix = as_tensor(mixture, dtype=F64)[None].to(torch.complex128)
    voc = as_tensor(vocals, dtype=F64)[None].to(torch.complex128)
    emb = as_tensor(embeddings, dtype=F64).permute(2, 0, 1)[None]  # (B, K, F, T)

    net = MultiHeadMMDenseNet(embedding_split="pre_block")
    losses = {}
    for weighting in ("none", "magnitude"):
        model = ChimeraSeparator(
            net, clustering="attractor", attractor_weighting=weighting, context_frames=8
        )
        losses[weighting] = float(model.clustering_loss(mix, voc, emb))
    default = ChimeraSeparator(net, clustering="attractor", context_frames=8)
    assert default.attractor_weighting == "none"
    expected = _brute_force_attractor_loss(mixture, vocals, embeddings, weighted=False)
    assert losses["none"] == pytest.approx(expected, rel=1e-12)
    expected_weighted = _brute_force_attractor_loss(mixture, vocals, embeddings, weighted=True)
    assert losses["magnitude"] == pytest.approx(expected_weighted, rel=1e-12)
    assert abs(losses["none"] - losses["magnitude"]) > 1e-3
    with pytest.raises(ValueError, match="attractor_weighting"):
        ChimeraSeparator(net, clustering="attractor", attractor_weighting="power")
    with pytest.raises(ValueError, match="clustering: attractor only"):
        ChimeraSeparator(net, attractor_weighting="magnitude")  # deep clustering: no attractors
