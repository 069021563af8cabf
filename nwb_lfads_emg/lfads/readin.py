"""Several sessions, one dynamics: per-session read-in/read-out around a shared LFADS (stitching).

As in lfads-torch's multi-session models: each session's channels are mapped linearly into a
common input space that the shared encoders read, and the shared factors are read out into each
session's own channels. The read-ins start from one principal-component fit across sessions (on
the union of their muscles, a muscle absent from a session counting as zero there), so a muscle
recorded in several sessions starts with the same read-in column and the same read-out row in
each: muscles shared by name are tied through the initialisation, then train freely. A session
added after training (adaptation) may get its own copy of the encoders and controller
(`own_encoders`), which drive the shared generator and factor map unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import LFADSConfig
from .likelihoods import make_likelihood
from .model import LFADS, LFADSOutput


class SessionIO(nn.Module):
    """One session's input transform, read-in (channels -> common space) and read-out (factors -> channels)."""

    def __init__(self, config: LFADSConfig, muscles: Sequence[str], readin_dim: int) -> None:
        super().__init__()
        self.config = config
        self.muscles = list(muscles)
        self.n_channels = len(self.muscles)
        self.likelihood = make_likelihood(config.likelihood)
        self.register_buffer("in_offset", torch.zeros(self.n_channels))
        self.register_buffer("in_loc", torch.zeros(self.n_channels))
        self.register_buffer("in_scale", torch.ones(self.n_channels))
        self.readin = nn.Linear(self.n_channels, readin_dim)
        self.readout = nn.Linear(config.fac_dim, self.n_channels * self.likelihood.n_params)
        # an adapted session's own encoders and controller (`MultiSessionLFADS.own_encoders`); None: the shared ones
        self.encoders: LFADS | None = None

    # the single-session model's input transform and read-out bias set-up, on this session's channels
    set_input_stats = LFADS.set_input_stats
    transform_input = LFADS.transform_input


def union_muscles(sessions: Sequence[Sequence[str]]) -> list[str]:
    """Muscle names of all sessions, in order of first appearance."""
    out: list[str] = []
    for muscles in sessions:
        out.extend(m for m in muscles if m not in out)
    return out


def check_muscles(muscles: Sequence[str], what: str) -> None:
    """Raise ValueError when a session names a muscle twice (names tie the sessions together)."""
    seen = [m for i, m in enumerate(muscles) if m in list(muscles)[:i]]
    if seen:
        raise ValueError(f"{what}: muscle name(s) {sorted(set(seen))} appear more than once")


def stitched_factors(config: LFADSConfig, sessions: Sequence[Sequence[str]]) -> int:
    """Factors of a stitched model: the configuration's plus one per muscle of the sessions' union.

    The shared factors carry the dynamics a single session's model has (the configuration's factors)
    and, on top, every muscle of every session with its own cycle-to-cycle gain. As many factors as
    muscles in the union (the earlier rule) left no room for the shared cycle: hamstrings fell to R^2
    0.58-0.60 in sessions where the per-session models reached 0.87-0.89 (measured: README, stitching)."""
    return int(config.fac_dim) + len(union_muscles(sessions))


class MultiSessionLFADS(nn.Module):
    """One LFADS (encoders, controller, generator, priors) shared by sessions with their own `SessionIO`."""

    def __init__(self, config: LFADSConfig, sessions: Sequence[Sequence[str]], readin_dim: int | None = None,
                 factors: int | None = None) -> None:
        """`factors`: the shared factors as already counted (a saved model's config); default
        `stitched_factors(config, sessions)`."""
        super().__init__()
        config.validate()
        for k, muscles in enumerate(sessions):
            check_muscles(muscles, f"session {k}")
        self.union = union_muscles(sessions)
        config = dataclasses.replace(config, fac_dim=int(factors or stitched_factors(config, sessions)))
        self.config = config
        self.readin_dim = int(readin_dim or len(self.union))
        self.core = LFADS(config, self.readin_dim)
        self.core.readout = nn.Identity()  # each session reads the shared factors out itself
        self.sessions = nn.ModuleList(SessionIO(config, m, self.readin_dim) for m in sessions)

    @property
    def session_muscles(self) -> list[list[str]]:
        """The muscles of each session, in its channel order."""
        return [s.muscles for s in self.sessions]

    def add_session(self, muscles: Sequence[str], data: Tensor) -> int:
        """Append a session, its input transform set from `data` (T, C) and its read-in/read-out started
        from the trained sessions' by muscle name (an unknown muscle keeps its random start); returns its index."""
        check_muscles(muscles, "new session")
        io = SessionIO(self.config, muscles, self.readin_dim)
        n_params = io.likelihood.n_params
        with torch.no_grad():
            io.set_input_stats(data)
            for c, name in enumerate(io.muscles):
                cols, rows = [], []
                for s in self.sessions:
                    if name in s.muscles:
                        j = s.muscles.index(name)
                        cols.append(s.readin.weight[:, j])
                        rows.append(torch.stack([s.readout.weight[p * s.n_channels + j] for p in range(n_params)]))
                if cols:  # a known muscle starts where the trained sessions put it
                    io.readin.weight[:, c] = torch.stack(cols).mean(0)
                    mean_rows = torch.stack(rows).mean(0)
                    for p in range(n_params):
                        io.readout.weight[p * io.n_channels + c] = mean_rows[p]
            io.readin.bias.zero_()
        io.to(next(self.core.parameters()).device)
        self.sessions.append(io)
        return len(self.sessions) - 1

    def own_encoders(self, session: int) -> LFADS:
        """Give `session` its own copy of the shared encoders and controller (started from the shared ones), for
        adapting a new session; the generator (its initial-state map, GRU and factor map) and the priors stay the
        shared modules, so the dynamics and the factors the read-outs read are the trained ones."""
        io = self.sessions[session]
        if io.encoders is None:
            core, dec = self.core, self.core.decoder
            own = copy.deepcopy(core)
            own.decoder.ic_to_g0, own.decoder.gen, own.decoder.fac_weight = dec.ic_to_g0, dec.gen, dec.fac_weight
            own.ic_prior, own.co_prior = core.ic_prior, core.co_prior
            io.encoders = own
        return io.encoders

    def session_parameters(self, session: int) -> list[nn.Parameter]:
        """The parameters only `session` uses: its read-in, read-out and (adapted) its own encoders and controller."""
        shared = {id(p) for p in self.core.parameters()}
        return [p for p in self.sessions[session].parameters() if id(p) not in shared]

    def train_only(self, session: int) -> list[nn.Parameter]:
        """Freeze every weight but `session`'s own (`session_parameters`), which it returns: what adaptation fits."""
        for p in self.parameters():
            p.requires_grad_(False)
        own = self.session_parameters(session)
        for p in own:
            p.requires_grad_(True)
        return own

    def _core_of(self, session: int) -> LFADS:
        """The LFADS whose encoders and controller read `session` (its own after `own_encoders`, else the shared)."""
        own = self.sessions[session].encoders
        return own if own is not None else self.core

    def fit_readout(self, session: int, segments: Tensor, steps: int = 100) -> float:
        """Fit `session`'s read-out to the shared model's factors on its (B, T, C) segments (the posterior-mean
        factors given its current read-in, held fixed): a regression onto the frozen factors, so that training
        a new session's read-in starts from a read-out that already explains its channels. Returns the NLL."""
        io = self.sessions[session]
        was_training = self.training
        self.eval()
        factors = self._posterior_factors(session, segments)
        target = segments.float()
        params = list(io.readout.parameters())
        saved = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.LBFGS(params, lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = io.likelihood.nll(io.readout(factors), target).mean()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            final = float(io.likelihood.nll(io.readout(factors), target).mean())
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)
        self.train(was_training)
        return final

    @torch.no_grad()
    def _posterior_factors(self, session: int, segments: Tensor) -> Tensor:
        """`session`'s posterior-mean factors on its (B, T, C) segments, 256 segments at a time (float32)."""
        return torch.cat([self(segments[i : i + 256], session, sample=False).factors
                          for i in range(0, segments.shape[0], 256)]).float()

    @torch.no_grad()
    def fit_readin(self, session: int, segments: Tensor) -> None:
        """Regress `session`'s read-in (a new session's) onto the shared input space: on its (B, T, C) segments,
        each trained session's read-in is given that session's encoder input for the same moments (its muscles
        that the new session records taken from the new data, the others predicted by its read-out from the
        current factors), and the new read-in is the least-squares map from the new input onto the mean of
        those inputs. The encoders then see the new session where they saw the trained ones, missing muscles
        included, which a start by muscle name alone does not give."""
        io = self.sessions[session]
        was_training = self.training
        self.eval()
        x = segments.float()
        factors = self._posterior_factors(session, x)
        u_new = io.transform_input(x)
        target = torch.zeros(*x.shape[:2], self.readin_dim, device=x.device)
        trained = [s for k, s in enumerate(self.sessions) if k != session]
        for s in trained:
            u = s.transform_input(s.likelihood.mean(s.readout(factors).float()))
            for c, name in enumerate(s.muscles):
                if name in io.muscles:
                    u[..., c] = u_new[..., io.muscles.index(name)]
            target += s.readin(u) / len(trained)
        inputs = u_new.reshape(-1, io.n_channels)
        design = torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], 1).double()
        solution = torch.linalg.lstsq(design, target.reshape(-1, self.readin_dim).double()).solution.float()
        io.readin.weight.copy_(solution[:-1].T)
        io.readin.bias.copy_(solution[-1])
        self.train(was_training)

    @torch.no_grad()
    def initialise(self, data: Sequence[Tensor]) -> None:
        """Set each session's input transform from its training data (T, C_s) and the read-ins from a
        PCA across sessions on the union of muscles; read-out rows of one muscle start equal."""
        if len(data) != len(self.sessions):
            raise ValueError(f"{len(data)} data arrays for {len(self.sessions)} sessions")
        blocks = []
        for io, x in zip(self.sessions, data, strict=True):
            io.set_input_stats(x)
            z = io.transform_input(x.float())
            full = z.new_zeros(z.shape[0], len(self.union))
            full[:, [self.union.index(m) for m in io.muscles]] = z
            blocks.append(full)
        stacked = torch.cat(blocks)
        stacked = stacked - stacked.mean(0)
        _, _, vh = torch.linalg.svd(stacked, full_matrices=False)
        comps = vh[: self.readin_dim].T  # (union, k), k <= readin_dim
        n_params = self.sessions[0].likelihood.n_params
        shared_out = torch.empty(n_params, len(self.union), self.config.fac_dim)
        nn.init.uniform_(shared_out, -(self.config.fac_dim ** -0.5), self.config.fac_dim ** -0.5)
        shared_out *= 0.1  # as the single-session read-out after `set_input_stats`
        for io in self.sessions:
            idx = [self.union.index(m) for m in io.muscles]
            w = torch.zeros(self.readin_dim, io.n_channels)
            w[: comps.shape[1]] = comps[idx].T
            io.readin.weight.copy_(w)
            io.readin.bias.zero_()
            io.readout.weight.copy_(shared_out[:, idx].reshape(n_params * io.n_channels, -1))

    def forward(self, x: Tensor, session: int, keep: Tensor | None = None, sample: bool = True) -> LFADSOutput:
        """x (B, T, C_s) data of `session`; keep (B, T, C_s) entries given to the encoders (as `LFADS`)."""
        return self.forward_sessions([x], [session], None if keep is None else [keep], sample=sample)[0]

    def forward_sessions(self, xs: Sequence[Tensor], sessions: Sequence[int], keeps: Sequence[Tensor] | None = None,
                         sample: bool = True) -> list[LFADSOutput]:
        """One batch of several sessions (xs[i]: (B_i, T, C_s) of session sessions[i], same T) through the
        shared encoders and generator in one pass: each read in by its own layers, read out by its own (a
        session with its own encoders and controller goes through them in a pass of its own)."""
        groups: dict[int, list[int]] = {}
        for i, session in enumerate(sessions):
            groups.setdefault(id(self._core_of(session)), []).append(i)
        outs: list[LFADSOutput | None] = [None] * len(xs)
        for members in groups.values():
            done = self._forward_group(self._core_of(sessions[members[0]]), [xs[i] for i in members],
                                       [sessions[i] for i in members],
                                       None if keeps is None else [keeps[i] for i in members], sample)
            for i, out in zip(members, done, strict=True):
                outs[i] = out
        return outs  # type: ignore[return-value]

    def _forward_group(self, core: LFADS, xs: Sequence[Tensor], sessions: Sequence[int],
                       keeps: Sequence[Tensor] | None, sample: bool) -> list[LFADSOutput]:
        """`forward_sessions` for sessions that share one set of encoders and controller (`core`)."""
        zs = []
        for i, (x, session) in enumerate(zip(xs, sessions, strict=True)):
            io = self.sessions[session]
            z = io.transform_input(x)
            if keeps is not None:
                frac = keeps[i].float().mean().clamp_min(1e-3)
                z = torch.where(keeps[i], z / frac, torch.zeros_like(z))
            zs.append(io.readin(core.in_dropout(z)))
        z = torch.cat(zs)
        ic_mean, ic_var = core.ic_encoder(z)
        ic = ic_mean + ic_var.sqrt() * torch.randn_like(ic_mean) if sample else ic_mean
        ci = core.ci_encoder(z) if core.ci_encoder is not None else None
        dec = core.decoder(ic, ci, z.shape[1], sample=sample)
        outs, start = [], 0
        for x, session in zip(xs, sessions, strict=True):
            io, part = self.sessions[session], slice(start, start + x.shape[0])
            start += x.shape[0]
            params = io.readout(dec["factors"][part])
            outs.append(LFADSOutput(params=params, means=io.likelihood.mean(params.float()),
                                    factors=dec["factors"][part], inputs=dec["inputs"][part],
                                    ic_mean=ic_mean[part], ic_var=ic_var[part], co_mean=dec["co_mean"][part],
                                    co_log_var=dec["co_log_var"][part]))
        return outs

    def loss(self, out: LFADSOutput, target: Tensor, grad_mask: Tensor | None = None, heldin: Tensor | None = None,
             kl_ramp: float = 1.0, l2_ramp: float = 1.0, session: int | None = None) -> dict[str, Tensor]:
        """The shared model's loss (`LFADS.loss`, lfads-torch's conventions) on one session's batch (with
        `session`: the L2 of the controller that session goes through, its own when adapted)."""
        core = self.core if session is None else self._core_of(session)
        return core.loss(out, target, grad_mask, heldin, kl_ramp=kl_ramp, l2_ramp=l2_ramp)

    def loss_sessions(self, outs: Sequence[LFADSOutput], targets: Sequence[Tensor],
                      grad_masks: Sequence[Tensor | None], heldins: Sequence[Tensor | None],
                      kl_ramp: float = 1.0, l2_ramp: float = 1.0,
                      sessions: Sequence[int] | None = None) -> dict[str, Tensor]:
        """The loss of a `forward_sessions` batch of `sessions`: each session's `loss`, averaged over the sessions
        (as lfads-torch averages its per-session reconstruction costs; the L2 term counts once)."""
        ids = list(sessions) if sessions is not None else [None] * len(outs)
        parts = [self.loss(o, t, g, h, kl_ramp=kl_ramp, l2_ramp=l2_ramp, session=k)
                 for o, t, g, h, k in zip(outs, targets, grad_masks, heldins, ids, strict=True)]
        out = {key: torch.stack([p[key] for p in parts]).mean() for key in parts[0]}
        c = self.config
        if c.readout_tie > 0:  # the sessions of this batch pull their read-outs of a muscle together
            tie = self.readout_tie_penalty(None if sessions is None else list(sessions))
            out["loss"] = out["loss"] + c.loss_scale * c.readout_tie * tie
            out["tie"] = tie
        return out

    def recon_nll(self, out: LFADSOutput, target: Tensor) -> Tensor:
        """Per-entry negative log-likelihood (B, T, C_s)."""
        return self.core.recon_nll(out, target)

    def readout_tie_penalty(self, sessions: Sequence[int] | None = None) -> Tensor:
        """Partial pooling of the read-outs by muscle name: 0.5 * the mean, over every read-out weight of a muscle
        recorded in two or more of `sessions` (default: all), of its squared deviation from the mean over those
        sessions of that muscle's weight. Only weights: under the Gamma's log link an electrode's gain is an
        offset of that channel's bias, which stays each session's own; a muscle of one session is free."""
        ids = list(range(len(self.sessions))) if sessions is None else list(dict.fromkeys(sessions))
        rows: dict[str, list[Tensor]] = {}
        for k in ids:
            io = self.sessions[k]
            w = io.readout.weight.view(io.likelihood.n_params, io.n_channels, -1)
            for c, name in enumerate(io.muscles):
                rows.setdefault(name, []).append(w[:, c])
        total, count = self.core.decoder.fac_weight.new_zeros(()), 0
        for group in rows.values():
            if len(group) > 1:
                stacked = torch.stack(group).float()
                total = total + (stacked - stacked.mean(0)).pow(2).sum()
                count += stacked.numel()
        return 0.5 * total / count if count else total

    def session_view(self, session: int) -> SessionModel:
        """This model as a single-session model of `session` (for inference with `training.infer`)."""
        return SessionModel(self, session)


class SessionModel(nn.Module):
    """A `MultiSessionLFADS` seen through one session: `forward(x)` like `LFADS`, `n_channels`, `config`."""

    def __init__(self, model: MultiSessionLFADS, session: int) -> None:
        super().__init__()
        self.model, self.session = model, int(session)
        self.config = model.config
        self.n_channels = model.sessions[session].n_channels

    def forward(self, x: Tensor, keep: Tensor | None = None, sample: bool = True) -> LFADSOutput:
        """As `LFADS.forward` for this session's channels."""
        return self.model(x, self.session, keep=keep, sample=sample)


__all__ = ["MultiSessionLFADS", "SessionIO", "SessionModel", "union_muscles", "check_muscles", "stitched_factors"]
