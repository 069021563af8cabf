"""What the analyses share with the rest of scoring: the decoding metrics and single-threaded BLAS."""

from __future__ import annotations

from ..metrics import decode_r2, one_blas_thread, r2_affine

__all__ = ["decode_r2", "one_blas_thread", "r2_affine"]
