"""Generate the YAML spec of the NWB extension ``ndx-lfads-emg``.

Run from the extension's folder (``extensions/ndx-lfads-emg``)::

    python src/spec/create_extension_spec.py

It writes ``ndx-lfads-emg.namespace.yaml`` and ``ndx-lfads-emg.extensions.yaml`` into ``spec/``
(shipped inside the wheel as ``ndx_lfads_emg/spec``). Commit both files after a change.
"""

from __future__ import annotations

from pathlib import Path

from pynwb.spec import (
    NWBAttributeSpec,
    NWBDatasetSpec,
    NWBGroupSpec,
    NWBLinkSpec,
    NWBNamespaceBuilder,
    export_spec,
)

NAME = "ndx-lfads-emg"
VERSION = "0.2.0"  # the namespace version; kept equal to the package version in pyproject.toml
# Maintainers' address; replace with the real list address before publishing to PyPI / the NDX catalog.
CONTACT = "maintainers@nwb-lfads-emg.org"
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "spec"


def _source_link() -> NWBLinkSpec:
    """Optional link from a derived series to the EMG it was estimated from."""
    return NWBLinkSpec(
        name="source_series",
        target_type="NWBDataInterface",
        doc=(
            "Link to the EMG the estimate was computed from: a TimeSeries (e.g. an ElectricalSeries "
            "with one channel per muscle) or a BehavioralTimeSeries holding one TimeSeries per muscle."
        ),
        quantity="?",
    )


def _provenance_link() -> NWBLinkSpec:
    """Optional link from a derived series to the record of how it was made."""
    return NWBLinkSpec(
        name="model_provenance",
        target_type="LFADSModelProvenance",
        doc="Link to the LFADSModelProvenance record describing the model run that produced this series.",
        quantity="?",
    )


def _unit_attribute(doc: str) -> NWBAttributeSpec:
    """The `unit` attribute of a redefined TimeSeries `data` dataset."""
    return NWBAttributeSpec(name="unit", dtype="text", doc=doc)


def build_types() -> list[NWBGroupSpec]:
    """Build the group specs of the three new neurodata types."""
    muscle_activation = NWBGroupSpec(
        neurodata_type_def="MuscleActivation",
        neurodata_type_inc="TimeSeries",
        doc=(
            "Estimated latent activation of each recorded muscle over time, derived from EMG. Column j of "
            "`data` belongs to the muscle named in `muscle_names[j]` and/or to the row `electrodes[j]` of "
            "the electrodes table. The `method` attribute names the estimator."
        ),
        attributes=[
            NWBAttributeSpec(
                name="method",
                dtype="text",
                doc=(
                    "Name of the estimator that produced the data, e.g. 'AutoLFADS' (posterior mean of "
                    "the LFADS rates, averaged over posterior samples), 'LowPass' (rectified EMG "
                    "filtered by a zero-phase low-pass filter) or 'BayesianFilter' (maximum a posteriori "
                    "(MAP) estimate, the mode of the posterior, of Sanger's Bayesian filter of rectified EMG)."
                ),
            ),
            NWBAttributeSpec(
                name="method_parameters",
                dtype="text",
                doc=(
                    "JSON object with the settings of the estimator that are not in a linked "
                    "LFADSModelProvenance record, e.g. {\"cutoff_hz\": 8.0} for 'LowPass'."
                ),
                required=False,
            ),
        ],
        datasets=[
            NWBDatasetSpec(
                name="data",
                dtype="numeric",
                dims=["num_times", "num_muscles"],
                shape=[None, None],
                doc=(
                    "Estimated activation, one row per time point and one column per muscle. Values are "
                    "in `unit` after applying `conversion` and `offset`; they are normalised per muscle "
                    "unless stated otherwise in the preprocessing record."
                ),
                attributes=[
                    _unit_attribute(
                        "Unit of the activation; 'a.u.' (arbitrary units) for values normalised per "
                        "muscle, or the unit of the rectified EMG (e.g. 'volts') when not normalised."
                    )
                ],
            ),
            NWBDatasetSpec(
                name="electrodes",
                neurodata_type_inc="DynamicTableRegion",
                doc=(
                    "Rows of the electrodes table recording each muscle, one per column of `data`, in "
                    "column order. Present when the source EMG is an ElectricalSeries."
                ),
                quantity="?",
            ),
            NWBDatasetSpec(
                name="muscle_names",
                dtype="text",
                dims=["num_muscles"],
                shape=[None],
                doc="Name of the muscle of each column of `data`, in column order.",
                quantity="?",
            ),
            NWBDatasetSpec(
                name="uncertainty",
                dtype="numeric",
                dims=["num_times", "num_muscles"],
                shape=[None, None],
                doc=(
                    "Posterior standard deviation of the activation, of the same shape and unit as "
                    "`data`. Written only by estimators that sample a posterior: for 'AutoLFADS' it is "
                    "the standard deviation of the rates across posterior samples. Absent for 'LowPass' "
                    "and 'BayesianFilter' (the MAP estimate carries no spread)."
                ),
                quantity="?",
            ),
        ],
        links=[_source_link(), _provenance_link()],
    )

    latent_factors = NWBGroupSpec(
        neurodata_type_def="LatentFactors",
        neurodata_type_inc="TimeSeries",
        doc=(
            "Low-dimensional latent factors inferred by an LFADS model from EMG, with the inferred "
            "inputs of its controller when the model has one. Shares the time base of `data`."
        ),
        datasets=[
            NWBDatasetSpec(
                name="data",
                dtype="numeric",
                dims=["num_times", "num_factors"],
                shape=[None, None],
                doc="Latent factors (posterior mean), one row per time point and one column per factor.",
                attributes=[_unit_attribute("Unit of the factors; 'a.u.' (factors have no physical unit).")],
            ),
            NWBDatasetSpec(
                name="inferred_inputs",
                dtype="numeric",
                dims=["num_times", "num_inputs"],
                shape=[None, None],
                doc=(
                    "Inputs inferred by the LFADS controller (posterior mean), one row per time point of "
                    "`data` and one column per input, in arbitrary units."
                ),
                quantity="?",
            ),
        ],
        links=[_source_link(), _provenance_link()],
    )

    def json_dataset(name: str, doc: str, required: bool = True) -> NWBDatasetSpec:
        return NWBDatasetSpec(name=name, dtype="text", doc=doc, quantity=1 if required else "?")

    provenance = NWBGroupSpec(
        neurodata_type_def="LFADSModelProvenance",
        neurodata_type_inc="NWBDataInterface",
        doc=(
            "How an LFADS / AutoLFADS estimate was made: the source data, the preprocessing, the model and "
            "training hyper-parameters, the training outcome, the random seed, the software versions and "
            "a hash of the trained weights. The JSON fields are UTF-8 JSON text."
        ),
        datasets=[
            json_dataset(
                "config",
                "JSON object with the full run configuration: model sizes, dropout, KL/L2 penalties and "
                "ramps, likelihood, learning rate, batch size, epochs, segment length/overlap, "
                "augmentations and, for AutoLFADS, the population-based training search space.",
            ),
            json_dataset(
                "preprocessing",
                "JSON object describing how raw EMG became model input: notch and high-pass filters, "
                "rectification, bin width (s), clipping and normalisation percentiles, per-muscle "
                "normalisation scale and positive floor.",
            ),
            json_dataset(
                "training_metrics",
                "JSON object with the training outcome: `best_val_loss`, the `device` trained on and "
                "`per_epoch` (a list of objects, one per epoch, with its training/validation losses).",
            ),
            json_dataset(
                "software_versions",
                "JSON object mapping package name to version (python, nwb-lfads-emg, torch, numpy, pynwb, "
                "hdmf, ray, ...) of the run that trained the model and wrote this record.",
            ),
            json_dataset(
                "pbt_history",
                "JSON object with the population-based training history: the metric, population size, "
                "generations and search space, `trials` (per trial: losses per iteration and "
                "hyper-parameter segments), `exploits` (each exploit/explore step) and `winner` (the "
                "selected trial and its lineage). Present only for AutoLFADS (PBT) runs.",
                required=False,
            ),
        ],
        attributes=[
            NWBAttributeSpec(
                name="random_seed",
                dtype="int64",
                doc="Seed of the random number generators used for initialisation, sampling and training.",
            ),
            NWBAttributeSpec(
                name="weights_sha256",
                dtype="text",
                doc="Hexadecimal SHA-256 digest of the saved weights (state dict) of the selected model.",
            ),
            NWBAttributeSpec(
                name="source_file_identifier",
                dtype="text",
                doc="`identifier` of the NWB file that held the source EMG.",
            ),
            NWBAttributeSpec(
                name="source_series_path",
                dtype="text",
                doc="Path of the source EMG object inside that file, e.g. '/acquisition/EMG'.",
            ),
            NWBAttributeSpec(
                name="source_url",
                dtype="text",
                doc="DANDI URL (or other URL) of the source file when it was read from an archive.",
                required=False,
            ),
        ],
    )
    return [muscle_activation, latent_factors, provenance]


def main(output_dir: Path | str = OUTPUT_DIR) -> None:
    """Write the namespace and extension YAML files (by default into the package's spec directory)."""
    ns_builder = NWBNamespaceBuilder(
        name=NAME,
        version=VERSION,
        doc=(
            "Latent muscle activation estimated from multi-muscle EMG (AutoLFADS and baselines), LFADS "
            "latent factors and inferred inputs, and the provenance of the model that produced them."
        ),
        author=["nwb-lfads-emg developers"],
        contact=[CONTACT],
    )
    for type_name in ("TimeSeries", "NWBDataInterface", "DynamicTableRegion"):
        ns_builder.include_type(type_name, namespace="core")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    export_spec(ns_builder, build_types(), str(output_dir))


if __name__ == "__main__":
    main()
