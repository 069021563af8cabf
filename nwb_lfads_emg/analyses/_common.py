"""Helpers shared by the analyses: single-threaded BLAS for many small solves, the decoding metrics."""

from __future__ import annotations

from contextlib import nullcontext

try:  # the metrics are moving from evaluate.py to metrics.py; accept either home
    from ..metrics import decode_r2, r2_affine  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - before that move
    from ..evaluate import decode_r2, r2_affine

try:  # optional: many small LAPACK calls are fastest single-threaded (threads only contend)
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
    _threadpool_limits = None


def one_blas_thread() -> object:
    """Context manager limiting BLAS to one thread (a no-op without threadpoolctl)."""
    return _threadpool_limits(limits=1, user_api="blas") if _threadpool_limits else nullcontext()


__all__ = ["decode_r2", "one_blas_thread", "r2_affine"]
