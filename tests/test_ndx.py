"""The package uses the extension from its own package, and an annotated file reads with the extension alone.

The extension's own tests (constructors, spec, round trips, back-compat) live in
``extensions/ndx-lfads-emg/src/pynwb/tests``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import ndx_lfads_emg
import numpy as np

from nwb_lfads_emg import ndx
from nwb_lfads_emg.writeback import ActivationEstimate, SessionResults, write_into_copy

OUR_TYPES = ("MuscleActivation", "LatentFactors", "LFADSModelProvenance")


def test_ndx_re_exports_the_extension() -> None:
    """`nwb_lfads_emg.ndx` is the extension package's classes, not a second copy."""
    for name in (*OUR_TYPES, "NAMESPACE", "NAMESPACE_PATH", "JSON_FIELDS"):
        assert getattr(ndx, name) is getattr(ndx_lfads_emg, name), name
    assert Path(ndx_lfads_emg.__file__).parent.name == "ndx_lfads_emg"
    assert "nwb_lfads_emg" not in Path(ndx.NAMESPACE_PATH).parts


def _results(muscles: list[str], n_bins: int = 400) -> SessionResults:
    """Write-back input of the pipeline's shapes (values random: only storage and reading are under test)."""
    rng = np.random.default_rng(5)
    m = len(muscles)
    return SessionResults(
        estimates=[
            ActivationEstimate("AutoLFADS", rng.random((n_bins, m)), uncertainty=rng.random((n_bins, m)),
                               parameters={"n_posterior_samples": 4}),
            ActivationEstimate("LowPass", rng.random((n_bins, m)), parameters={"cutoff_hz": 10.0}),
            ActivationEstimate("BayesianFilter", rng.random((n_bins, m))),
        ],
        rate=20.0,
        starting_time=0.0,
        muscles=muscles,
        source_series_path="acquisition/EMG",
        electrode_indices=list(range(m)),
        factors=rng.random((n_bins, 3)),
        inferred_inputs=rng.random((n_bins, 1)),
        provenance={
            "config": {"preset": "demo"},
            "preprocessing": {"bin_ms": 50.0, "scale": [1.0] * m},
            "training_metrics": {"best_val_loss": -1.0, "device": "cpu", "per_epoch": [{"epoch": 0, "val_loss": -1.0}]},
            "software_versions": {"torch": "2.13.0"},
            "pbt_history": {"population": 2, "trials": {}, "exploits": [], "winner": {"trial": "t0"}},
            "random_seed": 3,
            "weights_sha256": "ab" * 32,
            "source_file_identifier": "source-id",
            "source_series_path": "acquisition/EMG",
        },
    )


# Run in a fresh interpreter (-I: no PYTHONPATH, no user site) with torch, ray and nwb_lfads_emg unimportable.
READ_ALONE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = {"torch", "ray", "nwb_lfads_emg"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:
        try:
            __import__(name)
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit(f"{name} is importable: the blocker does not work")

    import ndx_lfads_emg
    from pynwb import NWBHDF5IO

    out = {"objects": {}, "loaded": sorted(m for m in BLOCKED if m in sys.modules)}
    with NWBHDF5IO(sys.argv[1], "r") as io:
        nwbfile = io.read()
        for obj in nwbfile.objects.values():
            if isinstance(obj, ndx_lfads_emg.MuscleActivation):
                info = {"type": "MuscleActivation", "method": obj.method, "muscles": obj.muscles,
                        "sum": float(obj.data[:].sum()),
                        "uncertainty_sum": None if obj.uncertainty is None else float(obj.uncertainty[:].sum()),
                        "source": None if obj.source_series is None else obj.source_series.name,
                        "provenance": None if obj.model_provenance is None else obj.model_provenance.name}
            elif isinstance(obj, ndx_lfads_emg.LatentFactors):
                info = {"type": "LatentFactors", "sum": float(obj.data[:].sum()),
                        "inputs_shape": list(obj.inferred_inputs.shape)}
            elif isinstance(obj, ndx_lfads_emg.LFADSModelProvenance):
                info = {"type": "LFADSModelProvenance", "record": obj.as_dict()}
            else:
                continue
            out["objects"][obj.name] = info
    print(json.dumps(out))
    """
)


def test_annotated_file_reads_with_the_extension_alone(small_nwb: Path, small_session, tmp_path: Path) -> None:
    """Whoever receives an annotated file reads every object of our types with pynwb + ndx_lfads_emg only."""
    results = _results(list(small_session.muscle_names))
    path = write_into_copy(small_nwb, results, tmp_path / "annotated.nwb", validate=False)  # test_writeback validates
    with h5py.File(path, "r") as f:  # ground truth of what is in the file, independent of pynwb
        written: dict[str, str] = {}
        f.visititems(lambda name, obj: written.__setitem__(name.rsplit("/", 1)[-1], obj.attrs.get("neurodata_type"))
                     if obj.attrs.get("neurodata_type") in OUR_TYPES else None)
    assert sorted(written.values()) == sorted(["MuscleActivation"] * 3 + ["LatentFactors", "LFADSModelProvenance"])

    proc = subprocess.run([sys.executable, "-I", "-c", READ_ALONE, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    objects = out["objects"]
    assert {name: o["type"] for name, o in objects.items()} == written
    for estimate in results.estimates:
        read = objects[estimate.method]
        assert read["method"] == estimate.method and read["muscles"] == list(small_session.muscle_names)
        np.testing.assert_allclose(read["sum"], estimate.data.astype(np.float32).sum(), rtol=1e-5)
        assert read["source"] == "EMG"
        if estimate.uncertainty is None:
            assert read["uncertainty_sum"] is None
        else:
            np.testing.assert_allclose(read["uncertainty_sum"], estimate.uncertainty.astype(np.float32).sum(), rtol=1e-5)
    assert objects["AutoLFADS"]["provenance"] == "LFADSModelProvenance"
    np.testing.assert_allclose(objects["LatentFactors"]["sum"], results.factors.astype(np.float32).sum(), rtol=1e-5)
    assert objects["LatentFactors"]["inputs_shape"] == [400, 1]
    record = objects["LFADSModelProvenance"]["record"]
    for field in ("config", "preprocessing", "training_metrics", "software_versions", "pbt_history", "random_seed"):
        assert record[field] == results.provenance[field], field
