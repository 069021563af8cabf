"""Object mappers: read the optional `source_series` link by its name only.

hdmf fills a named link that is absent from the file with any other link whose target has the
link's target type. `source_series` targets NWBDataInterface, so a MuscleActivation or
LatentFactors written with only `model_provenance` linked would be read back with the provenance
record as its `source_series`. These mappers resolve `source_series` strictly by name: the value
hdmf matched by type goes to a constructor argument the class does not have (so it is dropped),
and `source_series` comes only from a link of that name. Writing is unchanged.
"""

from __future__ import annotations

from typing import Any

from hdmf.build import BuildManager, GroupBuilder, ObjectMapper
from hdmf.spec import GroupSpec
from pynwb import register_map
from pynwb.io.base import TimeSeriesMap

from ..lfads_emg import LatentFactors, MuscleActivation

__all__ = ["SourceSeriesByNameMap"]

# Not a constructor argument of either class: hdmf's by-type match of the link lands here and is dropped.
_MATCHED_BY_TYPE = "_source_series_matched_by_type"


class SourceSeriesByNameMap(TimeSeriesMap):
    """TimeSeries mapper whose `source_series` argument comes only from a link named `source_series`."""

    def __init__(self, spec: GroupSpec) -> None:
        super().__init__(spec)
        link = next(link for link in spec.links if link.name == "source_series")
        self.map_const_arg(_MATCHED_BY_TYPE, link)

    @ObjectMapper.constructor_arg("source_series")
    def source_series_carg(self, builder: GroupBuilder, manager: BuildManager) -> Any:
        """The link named `source_series`, or None when the file has none."""
        link = builder.links.get("source_series")
        return None if link is None else manager.construct(link.builder)


register_map(MuscleActivation, SourceSeriesByNameMap)
register_map(LatentFactors, SourceSeriesByNameMap)
