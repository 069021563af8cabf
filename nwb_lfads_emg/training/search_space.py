"""The AutoLFADS hyper-parameter search space: bounds, log/linear sampling and bounded perturbation.

Names are `LFADSConfig` field names (see `lfads.config.MUTABLE_HYPERPARAMETERS`). Exploration
multiplies a value by a factor 1 + u (u ~ U(min_fraction * width, width)) or divides by it, either
way with equal probability, and redraws until the result lies within the bounds (AutoLFADS' rule);
for log-scaled parameters multiplying and dividing are symmetric in log space.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..lfads.config import MUTABLE_HYPERPARAMETERS, LFADSConfig


@dataclass(frozen=True)
class HyperParam:
    """One searched hyper-parameter: bounds, sampling scale and exploration width."""

    name: str
    low: float
    high: float
    log: bool = False
    width: float = 0.3
    integer: bool = False

    def __post_init__(self) -> None:
        if self.name not in MUTABLE_HYPERPARAMETERS:
            raise ValueError(f"{self.name!r} is not a hyper-parameter that can change during training "
                             f"(choose from {', '.join(MUTABLE_HYPERPARAMETERS)})")
        if not self.low <= self.high:
            raise ValueError(f"{self.name}: low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"{self.name}: a log-scaled range needs low > 0 (got {self.low})")
        if self.width <= 0:
            raise ValueError(f"{self.name}: the exploration width must be > 0 (got {self.width})")

    def clip(self, value: float) -> float | int:
        """The value forced into [low, high] (rounded for integer parameters)."""
        v = min(max(float(value), self.low), self.high)
        return int(round(v)) if self.integer else v

    def sample(self, rng: random.Random) -> float | int:
        """A value drawn uniformly (log-uniformly for log-scaled parameters) within the bounds."""
        if self.integer:
            return rng.randint(int(math.ceil(self.low)), int(math.floor(self.high)))
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def perturb(self, value: float, rng: random.Random, min_fraction: float = 0.1,
                max_tries: int = 100) -> float | int:
        """`value` times or divided by (1 + u), redrawn until within bounds (clipped after `max_tries`)."""
        if self.low == self.high:
            return self.clip(self.low)
        for _ in range(max_tries):
            u = rng.uniform(min_fraction * self.width, self.width)
            up = rng.random() < 0.5
            if self.log:
                new = value * (1.0 + u) if up else value / (1.0 + u)
            else:
                new = value * (1.0 + u) if up else value * (1.0 - u)
            if self.integer:
                stepped = int(round(new))
                if stepped == int(round(value)):  # a small factor would leave a small integer unchanged
                    stepped += 1 if up else -1
                new = stepped
            if self.low <= new <= self.high:
                return new
        return self.clip(new)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)


# AutoLFADS' search space (Keshtkaran et al. 2022; Wimalasena et al. 2022; lfads-torch's ranges, which
# mean the same here because the loss follows its conventions, see lfads.config) plus the EMG paper's
# temporal-shift SD in ms, kept above zero so a search cannot switch the augmentation off.
AUTOLFADS_SPACE: tuple[HyperParam, ...] = (
    HyperParam("lr", 1e-5, 5e-3, log=True, width=0.3),
    HyperParam("dropout", 0.0, 0.6, width=0.3),
    HyperParam("cd_rate", 0.01, 0.7, width=0.3),
    HyperParam("kl_co_scale", 1e-6, 1e-4, log=True, width=0.8),
    HyperParam("kl_ic_scale", 1e-6, 1e-3, log=True, width=0.8),
    HyperParam("l2_gen_scale", 1e-4, 1.0, log=True, width=0.8),
    HyperParam("l2_con_scale", 1e-4, 1.0, log=True, width=0.8),
    HyperParam("temporal_shift_ms", 2.0, 30.0, log=True, width=0.3),
)


def autolfads_search_space(overrides: Mapping[str, HyperParam | tuple | None] | None = None
                           ) -> dict[str, HyperParam]:
    """The default space keyed by name; `overrides` replaces entries (a HyperParam or a (low, high)
    pair keeping scale and width) or drops them (None)."""
    space = {p.name: p for p in AUTOLFADS_SPACE}
    for name, value in (overrides or {}).items():
        if value is None:
            space.pop(name, None)
        elif isinstance(value, HyperParam):
            space[name] = value
        else:
            low, high = value
            base = space.get(name) or HyperParam(name, low, high)
            space[name] = dataclasses.replace(base, low=low, high=high)
    return space


def validate_space(space: Mapping[str, HyperParam], config: LFADSConfig) -> None:
    """Raise ValueError when a corner of the space would make `config` invalid."""
    for name, p in space.items():
        if name != p.name:
            raise ValueError(f"search space key {name!r} holds the parameter {p.name!r}")
    if "cd_rate" in space and space["cd_rate"].high + config.sv_rate >= 0.95:
        raise ValueError(f"cd_rate up to {space['cd_rate'].high} plus sv_rate {config.sv_rate} leaves too "
                         "little input for the encoders (keep their sum below 0.95)")
    if "dropout" in space and space["dropout"].high >= 1.0:
        raise ValueError("dropout must stay below 1")


def widen_to_include(space: Mapping[str, HyperParam], values: Mapping[str, Any]
                     ) -> tuple[dict[str, HyperParam], list[str]]:
    """The space with each bound moved out to include `values` (a preset the search starts from, so
    its copies can be perturbed both ways); a log-scaled range is never widened to 0 or below (the
    temporal shift stays on). Returns (space, the names widened)."""
    out, widened = dict(space), []
    for name, p in space.items():
        v = values.get(name)
        if v is None or p.low <= v <= p.high or (p.log and v <= 0):
            continue
        out[name] = dataclasses.replace(p, low=min(p.low, float(v)), high=max(p.high, float(v)))
        widened.append(name)
    return out, widened


def clip_to_space(values: Mapping[str, Any], space: Mapping[str, HyperParam]) -> dict[str, Any]:
    """Only the searched keys of `values`, each forced into its bounds."""
    return {name: p.clip(values[name]) for name, p in space.items()}


def sample_population(space: Mapping[str, HyperParam], n: int, seed: int = 0,
                      first: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """`n` starting points drawn from the space; the first is `first` (clipped) when given."""
    rng = random.Random(seed)
    points = [{name: p.sample(rng) for name, p in space.items()} for _ in range(n)]
    if first is not None and n > 0:
        points[0] = clip_to_space(first, space)
    return points


class Explorer:
    """PBT explore step: perturb every searched key of a (copied) trial config within its bounds.

    A picklable callable (Ray stores the scheduler with the experiment, so a resumed search keeps it).
    """

    def __init__(self, space: Mapping[str, HyperParam], seed: int = 0, min_fraction: float = 0.1) -> None:
        self.space = dict(space)
        self.min_fraction = float(min_fraction)
        self.rng = random.Random(seed)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        """Return `config` with each searched hyper-parameter perturbed (other keys untouched)."""
        new = dict(config)
        for name, p in self.space.items():
            if name in new:
                new[name] = p.perturb(new[name], self.rng, self.min_fraction)
        return new
