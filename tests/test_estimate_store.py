"""Estimates streamed to disk: inference writes into an estimate store (a temporary HDF5 file in the run
directory) block by block, with a memory ceiling, and the write-back copies the stored datasets into the NWB
file unchanged (chunked, gzip) without loading them."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import torch

from nwb_lfads_emg.lfads import LFADSConfig
from nwb_lfads_emg.lfads.model import LFADS
from nwb_lfads_emg.store import GZIP_LEVEL, EstimateStore, OpenStores, StoredArray
from nwb_lfads_emg.training.inference import infer

N_BINS, N_CH = 60_000, 16  # one float32 output: 3.7 MiB


def _model() -> tuple[LFADS, LFADSConfig]:
    config = LFADSConfig(ic_enc_dim=4, ci_enc_dim=4, con_dim=4, co_dim=1, ic_dim=2, gen_dim=4, fac_dim=2, seg_len=40,
                         seg_overlap=8, num_threads=1)
    torch.manual_seed(0)
    model = LFADS(config, N_CH)
    model.eval()
    return model, config


def _data() -> np.ndarray:
    return np.random.default_rng(0).gamma(2.0, 0.5, size=(N_BINS, N_CH)).astype(np.float32)


def _peak_mib(fn) -> tuple[object, float]:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_inference_into_the_store_has_a_memory_ceiling_and_the_same_values(tmp_path: Path) -> None:
    model, config = _model()
    data = _data()
    one_output_mib = N_BINS * N_CH * 4 / 2**20
    in_memory, peak_memory = _peak_mib(lambda: infer(model, data, config, n_samples=1, device="cpu", batch_size=64))
    store = EstimateStore(tmp_path)
    _, peak_store = _peak_mib(lambda: infer(model, data, config, n_samples=1, device="cpu", batch_size=64,
                                            allocate=store.allocate))
    # memory follows the batch (64 segments: ~1.5 MiB measured), not the recording
    ceiling = 0.75 * one_output_mib
    assert peak_store < ceiling, (peak_store, ceiling)
    assert peak_memory > 3 * ceiling  # the whole-array outputs (what the store avoids) fail the ceiling
    for key, field in (("rates", "rates"), ("rates_var", "rates_std"), ("factors", "factors"),
                       ("inputs", "inferred_inputs")):
        stored = store.stored(key)
        assert isinstance(stored, StoredArray) and stored.shape == getattr(in_memory, field).shape
        assert np.array_equal(np.asarray(stored), getattr(in_memory, field))  # the same float32 numbers
    with h5py.File(store.path, "r") as f:
        assert f["rates"].compression == "gzip" and f["rates"].compression_opts == GZIP_LEVEL
        assert f["rates"].chunks[0] < N_BINS
    store.remove()
    assert not store.path.exists()


def test_write_back_copies_stored_datasets_chunk_by_chunk(tmp_path: Path) -> None:
    """The output's dataset is HDF5's copy of the stored one: same values, chunks and filter."""
    from hdmf.backends.hdf5 import H5DataIO

    from nwb_lfads_emg.writeback import _compressed

    store = EstimateStore(tmp_path)
    values = _data()[:5000]
    ds = store.allocate("LowPass/data", values.shape)
    for a in range(0, values.shape[0], 777):
        ds[a: a + 777] = values[a: a + 777]
    stored = store.stored("LowPass/data")
    stores = OpenStores()
    wrapped = _compressed(stored, stores)
    assert isinstance(wrapped, H5DataIO) and isinstance(wrapped.data, h5py.Dataset) and not wrapped.link_data
    out = tmp_path / "copy.h5"
    with h5py.File(out, "w") as f:
        f.copy(wrapped.data, "x")  # what hdmf does with link_data=False
        assert np.array_equal(f["x"][:], values)
        assert f["x"].chunks == wrapped.data.chunks and f["x"].compression == "gzip"
    stores.close()
    store.remove()
