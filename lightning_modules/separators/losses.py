"""Deep clustering, attractor and chimera objectives (thesis Section 4.6, eq. 4.8-4.12).

Layout conventions shared by every function (all plain torch, batch-first, any device/dtype):

* A spectrogram-shaped tensor ``(B, ..., F, T)`` is flattened to ``(B, F*T, ...)`` in row-major
  order, i.e. bin ``(f, t)`` sits at row ``f * T + t``. :func:`flatten_embeddings`,
  :func:`magnitude_weights` and :func:`dominant_source_labels` all use this order, so their
  outputs line up row by row.
* ``V`` (embeddings) is ``(B, TF, K)``, ``Y`` (one-hot labels) is ``(B, TF, N)``, ``w``
  (per-bin weights) is ``(B, TF)``, attractors ``A`` are ``(B, K, N)``.

The chimera *main* head (spectrogram or mask inference, e.g. against
:func:`lightning_modules.dsp.spectral.wiener_like_mask` targets) is ordinary regression; only its
combination with the clustering term lives here (:func:`chimera_loss`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "flatten_embeddings",
    "magnitude_weights",
    "dominant_source_labels",
    "deep_clustering_loss",
    "attractors",
    "attractor_masks",
    "chimera_loss",
]


def _check_rank(name: str, x: Tensor, rank: int) -> None:
    if x.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(x.shape)}")


def flatten_embeddings(embeddings: Tensor) -> Tensor:
    """``(B, K, F, T) -> (B, F*T, K)``: a conv head's channels become per-bin embedding rows.

    Row ``f * T + t`` holds the embedding of bin ``(f, t)``, the same order as
    :func:`magnitude_weights` and :func:`dominant_source_labels`. No unit-length normalisation is
    applied here (do it on dim ``-1`` if the model does not).
    """
    _check_rank("embeddings", embeddings, 4)
    b, k, f, t = embeddings.shape
    return embeddings.permute(0, 2, 3, 1).reshape(b, f * t, k)


def magnitude_weights(mixture_magnitude: Tensor) -> Tensor:
    """Per-bin weights ``w_tf = |X_tf| / sum_tf |X_tf|`` (eq. 4.9): ``(B, F, T) -> (B, F*T)``.

    Down-weights low-energy bins whose dominant-source label is arbitrary. Each example's weights
    sum to 1; a silent example (all-zero mixture) gets all-zero weights rather than NaN. Complex
    input is reduced to its magnitude.
    """
    _check_rank("mixture_magnitude", mixture_magnitude, 3)
    mag = mixture_magnitude.abs().flatten(1)
    total = mag.sum(dim=1, keepdim=True)
    return torch.where(total > 0, mag / total.clamp_min(torch.finfo(mag.dtype).tiny), 0.0)


def dominant_source_labels(source_magnitudes: Tensor) -> Tensor:
    """Ideal binary (one-hot) labels ``Y``: ``(B, N, F, T) -> (B, F*T, N)``.

    ``Y[b, f*T + t, n] = 1`` iff source ``n`` has the largest magnitude in bin ``(f, t)``
    (equivalently the largest power). Ties, including bins where every source is silent, go to
    the lowest source index (``torch.argmax`` returns the first maximum); such bins should carry
    little weight anyway (:func:`magnitude_weights`). Labels take the sources' real dtype.
    """
    _check_rank("source_magnitudes", source_magnitudes, 4)
    mag = source_magnitudes.abs()
    n_sources = mag.shape[1]
    winner = mag.argmax(dim=1)  # (B, F, T)
    one_hot = torch.nn.functional.one_hot(winner, n_sources).to(mag.dtype)  # (B, F, T, N)
    return one_hot.flatten(1, 2)


def _normalised_weights(weights: Tensor | None, like: Tensor) -> Tensor:
    """Per-example weights summing to 1 (uniform ``1/TF`` if ``None``; all-zero stays zero)."""
    b, tf = like.shape[:2]
    if weights is None:
        return like.new_full((b, tf), 1.0 / tf)
    _check_rank("weights", weights, 2)
    if weights.shape != (b, tf):
        raise ValueError(f"weights must have shape {(b, tf)}, got {tuple(weights.shape)}")
    w = weights.to(like.dtype)
    total = w.sum(dim=1, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), 0.0)


def _check_embeddings_and_labels(embeddings: Tensor, labels: Tensor) -> None:
    """(B, TF, K) embeddings and (B, TF, N) labels over the same bins."""
    _check_rank("embeddings", embeddings, 3)
    _check_rank("labels", labels, 3)
    if labels.shape[:2] != embeddings.shape[:2]:
        raise ValueError(
            f"embeddings {tuple(embeddings.shape)} and labels {tuple(labels.shape)} must share "
            "(B, TF)"
        )


def deep_clustering_loss(
    embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
) -> Tensor:
    """(Weighted) deep clustering loss ``||W^1/2 (V V^T - Y Y^T) W^1/2||_F^2`` (eq. 4.8/4.9).

    Computed in ``O(TF (K + N)^2)`` via the low-rank identity
    ``||V^T W V||^2 + ||Y^T W Y||^2 - 2 ||V^T W Y||^2``, never forming the ``TF x TF`` affinities
    (``V^T W V`` equals ``V'^T V'`` with rows of ``V`` scaled by ``sqrt(w)``; no square root is
    taken, so gradients stay finite at zero weights).

    Normalisation: each example's weights are rescaled to sum to 1 before use, so its value is
    the weighted *mean* over all bin pairs, ``sum_ij w_i w_j (v_i.v_j - y_i.y_j)^2`` with
    ``sum_i w_i = 1``. For unit-length embeddings and one-hot labels it lies in ``[0, 4]``
    whatever the number of bins or the mixture's loudness. With :func:`magnitude_weights` this
    is exactly eq. 4.9 (those weights already sum to 1); ``weights=None`` means uniform
    ``w = 1/TF``, i.e. the unweighted eq. 4.8 divided by ``TF^2`` (the chimera paper divides by
    ``TF`` only, which still grows with the excerpt size). Being a mean, it sits on the scale of
    a per-bin MSE, so the chimera ``alpha`` keeps its meaning across STFT sizes and context
    lengths. An example whose weights are all zero (silent mixture) contributes 0; the result is
    the mean over the batch, silent examples included. A source that dominates no bin is just a
    zero label column. Soft labels work the same way. The expanded form is a difference of sums,
    so a perfect solution can come out as about ``-eps`` rather than exactly 0.

    Args:
        embeddings: ``V``, ``(B, TF, K)``, normally unit-length rows.
        labels: ``Y``, ``(B, TF, N)`` one-hot (any numeric/bool dtype; cast to ``V``'s dtype).
        weights: ``(B, TF)`` non-negative per-bin weights, or ``None`` for uniform.
    """
    _check_embeddings_and_labels(embeddings, labels)
    v = embeddings
    y = labels.to(v.dtype)
    w = _normalised_weights(weights, v).unsqueeze(-1)  # (B, TF, 1)
    wv, wy = w * v, w * y
    vv = v.transpose(1, 2) @ wv  # (B, K, K) = V^T W V
    yy = y.transpose(1, 2) @ wy  # (B, N, N) = Y^T W Y
    vy = v.transpose(1, 2) @ wy  # (B, K, N) = V^T W Y
    per_example = vv.square().sum((1, 2)) + yy.square().sum((1, 2)) - 2 * vy.square().sum((1, 2))
    return per_example.mean()


def attractors(embeddings: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """Attractors ``a_kn = sum_tf w_tf v_tfk y_tfn / sum_tf w_tf y_tfn`` (eq. 4.10): ``(B, K, N)``.

    The (weighted) centroid of the embeddings of the bins each source dominates; ``weights=None``
    is eq. 4.10 as printed (``ChimeraSeparator``'s default; its
    ``attractor_weighting="magnitude"`` passes the mixture magnitudes). The per-source ratio
    does not depend on the weights' scale, so they are used as given. A source with no
    (weighted) bins gets the zero attractor, not NaN, which makes its score ``V A`` zero for
    every bin in :func:`attractor_masks`.
    """
    _check_embeddings_and_labels(embeddings, labels)
    v = embeddings
    y = labels.to(v.dtype)
    if weights is not None:
        if weights.shape != v.shape[:2]:
            raise ValueError(
                f"weights must have shape {tuple(v.shape[:2])}, got {tuple(weights.shape)}"
            )
        y = y * weights.to(v.dtype).unsqueeze(-1)
    numerator = v.transpose(1, 2) @ y  # (B, K, N)
    denominator = y.sum(dim=1, keepdim=True)  # (B, 1, N)
    safe = denominator.clamp_min(torch.finfo(v.dtype).tiny)
    return torch.where(denominator > 0, numerator / safe, 0.0)


def attractor_masks(embeddings: Tensor, attractors: Tensor) -> Tensor:
    """Soft masks ``softmax_n(V A)`` (eq. 4.11): ``(B, TF, K), (B, K, N) -> (B, TF, N)``.

    Each bin is assigned to the sources by similarity to their attractors; the masks sum to 1
    over sources, so the masked estimates add back up to the mixture. Reshape to ``(B, N, F, T)``
    with ``m.transpose(1, 2).unflatten(-1, (F, T))``.
    """
    _check_rank("embeddings", embeddings, 3)
    _check_rank("attractors", attractors, 3)
    return torch.softmax(embeddings @ attractors, dim=-1)


def chimera_loss(clustering: Tensor, main: Tensor, alpha: float) -> Tensor:
    """Chimera objective ``alpha * L_clustering + (1 - alpha) * L_main`` (eq. 4.12).

    ``alpha = 1`` is a pure deep clustering network, ``alpha = 0`` pure mask/spectrogram
    inference (the thesis found 0.5 a good compromise with WF-MA). Raises ``ValueError`` unless
    ``0 <= alpha <= 1`` (NaN included).
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * clustering + (1.0 - alpha) * main
