"""A seeded generator of small random Pyro (model, guide) pairs for differential tests.

``generate(seed)`` returns a :class:`Case`; ``case.triple()`` is ``(model, guide, description)``.
Both callables take one argument, ``step`` (an int): it picks the subsample sizes of this call
(they cycle through each subsampled plate's ``subsample`` tuple), so that sizes change across
calls. Every parameter is created by ``pyro.param`` with a fixed initial value drawn at generation
time, so a cleared param store gives the same model on every run.

Features drawn at random (each case's ``features`` set says which it has):

* vectorized plates with explicit dims, nested (distinct dims) or siblings (possibly sharing a
  dim); plate objects reused by several blocks; subsampling with sizes changing across calls;
* a sequential loop: ``for i in pyro.plate(...)`` (optionally subsampled, so that site names
  change between calls) or ``for t in pyro.markov(range(T))`` with a Markov chain;
* ``poutine.scale`` and ``poutine.mask`` around blocks, ``fn.mask(...)`` on sites (model and
  guide), ``pyro.factor`` in the model and in the guide (``has_rsample=True``);
* plates in the model but not the guide: blocks of observations only, which the guide never
  enters, so its sites are global there (a plated model site that the guide samples outside
  the plates as one ``.to_event`` site is refused by Pyro: the invalid kind ``event_dims``);
* latent Bernoulli, Categorical (3 values), Poisson (score function) and Normal, Gamma
  (reparameterized) sites, with model and guide dependency structures drawn independently.

Dependencies respect Pyro's rule that a site outside a plate never depends on one inside it
(parents' plates are a subset of the child's), so ``TraceEnum_ELBO`` computes the exact ELBO of
a case whose discrete guide sites are all enumerable (the unbiasedness reference).

Render options (``case.model_fn(...)`` / ``case.guide_fn(...)``):

* ``full=True``: no subsampling (the full-data objective that subsampled steps estimate);
* ``enum_safe=True``: ``pyro.markov`` replaced by ``range`` (guide-side enumeration must not
  recycle dims across a chain);
* ``baselines``: ``name -> infer["baseline"] dict or None`` for guide score sites. A dict with
  ``"nn_baseline"`` gets ``nn_baseline_input`` set after sampling, to zeros of the site's batch
  shape (so a :class:`CostProbe` can return a leaf of exactly the downstream cost's shape).

``invalid_case(kind, seed)`` returns a case that Pyro rejects (``INVALID_KINDS``) or, for the
``ok_*`` kinds, an unusual one that it accepts.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

DISCRETE = ("bernoulli", "categorical", "poisson")
CONTINUOUS = ("normal", "gamma")
ENUMERABLE = ("bernoulli", "categorical")
NUM_CATEGORIES = 3


@dataclass(frozen=True)
class Plate:
    name: str
    size: int
    dim: int
    subsample: tuple[int, ...] | None = None
    parent: str | None = None


@dataclass(frozen=True)
class Loop:
    name: str
    size: int
    kind: str  # "plate" (sequential pyro.plate) or "markov" (pyro.markov(range(size)))
    subsample: tuple[int, ...] | None = None


@dataclass
class Latent:
    name: str
    family: str
    path: tuple[str, ...]
    loop: str | None
    parent: str | None = None  # model-side parent; "__prev__": own previous step (markov)
    guide_parent: str | None = None
    guide_global: bool = False
    model_mask: bool = False
    guide_mask: bool = False
    coef: float = 0.0
    gcoef: float = 0.0


@dataclass
class Observed:
    name: str
    family: str
    path: tuple[str, ...]
    loop: str | None
    parents: tuple[str, ...] = ()
    coefs: tuple[float, ...] = ()
    mask: bool = False


@dataclass
class Factor:
    name: str
    side: str  # "model" or "guide"
    path: tuple[str, ...]
    loop: str | None
    parent: str = ""
    coef: float = 0.0


@dataclass
class Block:
    bid: int
    path: tuple[str, ...]
    items: list
    model_scale: float | None = None
    guide_scale: float | None = None
    model_mask: bool = False


@dataclass
class Group:
    loop: Loop | None
    blocks: list[Block]


def feat(v):
    """A bounded real feature of a site's value (discrete values become floats)."""
    return torch.tanh(v.float() if not v.is_floating_point() else v)


class CostProbe(torch.nn.Module):
    """An ``nn_baseline`` that returns zeros as fresh leaves and keeps them.

    ``TraceGraph_ELBO`` (and Pyro-style ELBOs) add ``(cost - b)^2`` to the surrogate loss for an
    ``nn_baseline`` and divide the surrogate by the number of particles ``K``; with ``b = 0``
    the leaf's gradient after ``backward`` is ``-2 * cost / K``: the site's downstream cost,
    read through Pyro's public baseline convention."""

    def __init__(self):
        super().__init__()
        self.leaves: list[torch.Tensor] = []

    def forward(self, x):
        leaf = torch.zeros(x.shape, requires_grad=True)
        self.leaves.append(leaf)
        return leaf

    def costs(self, num_particles: int) -> list[torch.Tensor]:
        return [None if t.grad is None else -0.5 * num_particles * t.grad for t in self.leaves]


class _Env:
    """Per-call state: lazily built plate objects, sampled values, the step and options."""

    def __init__(self, case: Case, step: int, side: str, full: bool, enum_safe: bool):
        self.case, self.step, self.side = case, step, side
        self.full, self.enum_safe = full, enum_safe
        self.plates: dict[str, pyro.plate] = {}
        self.vals: dict[str, torch.Tensor] = {}

    def subsample_size(self, sizes):
        if sizes is None or self.full:
            return None
        return sizes[self.step % len(sizes)]

    def plate(self, name: str):
        if name not in self.plates:
            p = self.case.plates[name]
            dim = p.dim
            if self.case.invalid == "dim_clash" and p.parent is not None:
                dim = self.case.plates[p.parent].dim
            m = self.subsample_size(p.subsample)
            if self.case.invalid == "subsample_mismatch" and self.side == "guide" and m:
                m = m - 1
            self.plates[name] = pyro.plate(p.name, p.size, subsample_size=m, dim=dim)
        return self.plates[name]

    def align(self, full_tensor, path, i=None, event=0, subsampled=True):
        """Index a full-size tensor (axes: [loop,] plates by ascending dim[, event]) by the
        plates' current indices and reshape it so each plate axis sits at its dim."""
        t = full_tensor if i is None else full_tensor[i]
        plates = sorted((self.case.plates[n] for n in path), key=lambda p: p.dim)
        if not plates:
            return t
        n = max(-p.dim for p in plates)
        shape = [1] * n
        for axis, p in enumerate(plates):
            if subsampled:
                t = t.index_select(axis, self.plate(p.name).indices)
            shape[n + p.dim] = t.shape[axis]
        return t.reshape(shape + list(t.shape[len(plates) :][:event] if event else []))


@dataclass
class Case:
    seed: int
    plates: dict[str, Plate]
    loops: dict[str, Loop]
    groups: list[Group]
    inits: dict[str, torch.Tensor] = field(default_factory=dict)
    data: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    invalid: str | None = None
    elbo_nesting_delta: int = 0
    features: set[str] = field(default_factory=set)

    # ---------------------------------------------------------------- structure queries
    def items(self):
        for g in self.groups:
            for b in g.blocks:
                yield from b.items

    def latents(self) -> list[Latent]:
        return [it for it in self.items() if isinstance(it, Latent)]

    @property
    def nesting(self) -> int:
        """The plate dims the model uses (``max -dim`` over the plates its blocks enter)."""
        used = {n for g in self.groups for b in g.blocks for n in b.path}
        return max((-self.plates[n].dim for n in used), default=0)

    def multiplicity(self, item) -> int:
        if item.loop is None:
            return 1
        loop = self.loops[item.loop]
        return max(loop.subsample) if loop.subsample else loop.size

    @property
    def vectorizable(self) -> bool:
        """Whether particles can be vectorized: a global guide site (``.to_event`` over plate
        dims) would put its event dims to the right of the particle plate."""
        return not any(lat.guide_global for lat in self.latents())

    def gradient_eligible(self) -> bool:
        """Small enough for an exact reference: only enumerable discrete sites (few), few
        continuous sites, no global guide site."""
        lats = self.latents()
        n_disc = sum(self.multiplicity(x) for x in lats if x.family in DISCRETE)
        n_cont = sum(self.multiplicity(x) for x in lats if x.family in CONTINUOUS)
        return (
            self.invalid is None
            and self.vectorizable
            and all(x.family != "poisson" for x in lats)
            and 1 <= n_disc <= 6
            and n_cont <= 3
        )

    @property
    def description(self) -> str:
        parts = [f"seed={self.seed}"]
        if self.invalid:
            parts.append(f"INVALID:{self.invalid}")
        for p in self.plates.values():
            sub = f" subsample={p.subsample}" if p.subsample else ""
            inside = f" in {p.parent}" if p.parent else ""
            parts.append(f"plate {p.name}[{p.size}] dim={p.dim}{inside}{sub}")
        for lp in self.loops.values():
            sub = f" subsample={lp.subsample}" if lp.subsample else ""
            parts.append(f"loop {lp.name}[{lp.size}] {lp.kind}{sub}")
        for g in self.groups:
            for b in g.blocks:
                ctx = "/".join(b.path) or "global"
                if g.loop:
                    ctx = f"{g.loop.name}:{ctx}"
                extra = []
                if b.model_scale:
                    extra.append(f"mscale={b.model_scale}")
                if b.guide_scale:
                    extra.append(f"gscale={b.guide_scale}")
                if b.model_mask:
                    extra.append("mmask")
                its = []
                for it in b.items:
                    if isinstance(it, Latent):
                        s = f"{it.name}~{it.family}"
                        if it.parent:
                            s += f"|{it.parent}"
                        if it.guide_parent:
                            s += f"|q:{it.guide_parent}"
                        if it.guide_global:
                            s += "(qglobal)"
                        if it.model_mask or it.guide_mask:
                            s += "(fnmask)"
                    elif isinstance(it, Observed):
                        s = f"obs {it.name}~{it.family}|{','.join(it.parents)}"
                    elif isinstance(it, Factor):
                        s = f"{it.side}factor {it.name}|{it.parent}"
                    else:
                        s = f"model-only {it.name}~{it.family}"
                    its.append(s)
                parts.append(f"[{ctx}{' ' + ' '.join(extra) if extra else ''}: {'; '.join(its)}]")
        return " ".join(parts)

    # ---------------------------------------------------------------- rendering
    def triple(self):
        return self.model_fn(), self.guide_fn(), self.description

    def model_fn(self, full=False, enum_safe=False):
        def model(step=0):
            env = _Env(self, step, "model", full, enum_safe)
            for group in self.groups:
                self._run_group(env, group)
            if self.invalid == "leak":
                local = next(x for x in self.latents() if x.path and x.loop is None)
                pyro.sample(
                    "leak", dist.Normal(feat(env.vals[local.name]), 1.0), obs=torch.tensor(0.0)
                )

        return model

    def guide_fn(self, full=False, enum_safe=False, baselines=None):
        def guide(step=0):
            env = _Env(self, step, "guide", full, enum_safe)
            env.baselines = baselines
            for group in self.groups:
                self._run_group(env, group)

        return guide

    def _iterations(self, env, loop):
        if loop is None:
            return [None]
        if loop.kind == "plate":
            return pyro.plate(
                loop.name, loop.size, subsample_size=env.subsample_size(loop.subsample)
            )
        return range(loop.size) if env.enum_safe else pyro.markov(range(loop.size))

    def _run_group(self, env, group):
        for i in self._iterations(env, group.loop):
            for block in group.blocks:
                if env.side == "model":
                    self._model_block(env, block, i)
                else:
                    self._guide_block(env, block, i)

    @staticmethod
    def full_name(base, i):
        return base if i is None else f"{base}_{i}"

    def _ref(self, env, base, i):
        """The value of parent ``base`` as seen from iteration ``i``."""
        owner = next(x for x in self.latents() if x.name == base)
        return env.vals[self.full_name(base, i if owner.loop is not None else None)]

    def _model_block(self, env, block, i):
        plates = [env.plate(n) for n in block.path]
        with contextlib.ExitStack() as stack:
            if block.model_scale:
                stack.enter_context(poutine.scale(scale=block.model_scale))
            if block.model_mask:
                mask = env.align(self.masks[f"block{block.bid}"], block.path, i)
                stack.enter_context(poutine.mask(mask=mask))
            for p in plates:
                stack.enter_context(p)
            for it in block.items:
                if isinstance(it, Latent):
                    self._model_latent(env, it, i)
                elif isinstance(it, Observed):
                    self._model_observed(env, it, i)
                elif isinstance(it, _ModelOnly):
                    d = dist.Bernoulli(0.4) if it.family == "bernoulli" else dist.Normal(0.0, 1.0)
                    env.vals[it.name] = pyro.sample(it.name, d)
                elif it.side == "model":
                    v = self._ref(env, it.parent, i)
                    pyro.factor(self.full_name(it.name, i), it.coef * feat(v))

    def _model_latent(self, env, it, i):
        name = self.full_name(it.name, i)
        if it.parent == "__prev__":
            prev = None if i is None or i == 0 else env.vals.get(self.full_name(it.name, i - 1))
        elif it.parent:
            prev = self._ref(env, it.parent, i)
        else:
            prev = None
        f = 0.0 if prev is None else feat(prev)
        a = pyro.param(f"m_{it.name}", self.inits[f"m_{it.name}"].clone())
        if it.family == "normal":
            d = dist.Normal(a + it.coef * f, 1.0)
        elif it.family == "gamma":
            d = dist.Gamma((0.7 + 0.3 * torch.tanh(a + it.coef * f)).exp(), 1.5)
        elif it.family == "bernoulli":
            d = dist.Bernoulli(logits=a + it.coef * f)
        elif it.family == "categorical":
            d = dist.Categorical(logits=a + it.coef * torch.as_tensor(f)[..., None])
        else:
            d = dist.Poisson((0.5 + 0.5 * torch.tanh(a + it.coef * f)).exp())
        if it.model_mask:
            d = d.mask(env.align(self.masks[it.name], it.path, i))
        env.vals[name] = pyro.sample(name, d)
        if self.invalid == "duplicate" and it is self.latents()[0]:
            pyro.sample(name, d)

    def _model_observed(self, env, it, i):
        name = self.full_name(it.name, i)
        z = 0.3
        for parent, c in zip(it.parents, it.coefs, strict=True):
            z = z + c * feat(self._ref(env, parent, i))
        data = self.data[it.name]
        if self.invalid == "obs_shape" and it is self._first_plated_obs():
            obs = torch.cat([data, data[:1]])  # one datum too many
            obs = env.align(obs, it.path, i, subsampled=False)
        else:
            obs = env.align(data, it.path, i)
        d = dist.Normal(z, 0.8) if it.family == "normal" else dist.Bernoulli(logits=z)
        if it.mask:
            d = d.mask(env.align(self.masks[it.name], it.path, i))
        pyro.sample(name, d, obs=obs)

    def _first_plated_obs(self):
        return next(
            (x for x in self.items() if isinstance(x, Observed) and x.path and x.loop is None),
            None,
        )

    def _guide_block(self, env, block, i):
        for it in block.items:  # global guide sites: outside the block's plates
            if isinstance(it, Latent) and it.guide_global:
                self._guide_latent(env, it, i, glob=True)
        rest = [
            it
            for it in block.items
            if (isinstance(it, Latent) and not it.guide_global)
            or (isinstance(it, Factor) and it.side == "guide")
        ]
        if not rest:
            return  # the guide never enters this block's plates
        plates = [env.plate(n) for n in block.path]
        with contextlib.ExitStack() as stack:
            if block.guide_scale:
                stack.enter_context(poutine.scale(scale=block.guide_scale))
            for p in plates:
                stack.enter_context(p)
            for it in rest:
                if isinstance(it, Latent):
                    self._guide_latent(env, it, i)
                else:
                    v = self._ref(env, it.parent, i)
                    pyro.factor(
                        self.full_name(it.name, i), -it.coef * feat(v) ** 2, has_rsample=True
                    )

    def _guide_param(self, env, key, i, path, event, glob):
        name = self.full_name(key, i)
        init = self.inits[key] if i is None else self.inits[key][i]
        raw = pyro.param(name, init.clone())
        if self.invalid == "guide_shape" and not glob and key.startswith(self._bad_key()):
            # a full-size (N + 1) parameter inside the (sub)sampled plate: a shape error
            return env.align(raw, path, None, event, subsampled=False)
        if self.invalid == "ok_scalar_guide_param" and not glob and key.startswith(self._bad_key()):
            return raw.mean(tuple(range(raw.dim() - event)))  # broadcast by the plates
        return env.align(raw, path, None, event, subsampled=not glob)

    def _bad_key(self):
        bad = next(x for x in self.latents() if x.path and not x.guide_global)
        return f"q_{bad.name}_"

    def _guide_latent(self, env, it, i, glob=False):
        name = self.full_name(it.name, i)
        f = 0.0
        if it.guide_parent:
            f = feat(self._ref(env, it.guide_parent, i))
        fam = it.family
        if self.invalid == "support" and fam == "gamma":
            fam = "negative"  # negative values for a Gamma model site

        def par(k, event=0):
            return self._guide_param(env, f"q_{it.name}_{k}", i, it.path, event, glob)

        if fam == "normal":
            d = dist.Normal(par("a") + it.gcoef * f, par("b").exp())
        elif fam == "gamma":
            d = dist.Gamma((par("a") + it.gcoef * f).exp(), par("b").exp())
        elif fam == "bernoulli":
            d = dist.Bernoulli(logits=par("a") + it.gcoef * f)
        elif fam == "categorical":
            d = dist.Categorical(logits=par("a", 1) + it.gcoef * torch.as_tensor(f)[..., None])
        elif fam == "poisson":
            d = dist.Poisson((par("a") + it.gcoef * f).exp())
        else:  # "negative"
            d = dist.Normal(par("a") - 5.0, 0.1)
        if it.guide_mask:
            d = d.mask(env.align(self.masks[it.name + "_q"], it.path, i, subsampled=not glob))
        if glob:
            d = d.to_event(len(d.batch_shape))
        options = None
        baselines = getattr(env, "baselines", None)
        if baselines is not None and fam in DISCRETE:
            options = baselines(name)
        infer = {} if options is None else {"baseline": options}
        value = pyro.sample(name, d, infer=infer)
        if options is not None and "nn_baseline" in options:
            batch = value.shape[: value.dim() - len(d.event_shape)]
            options["nn_baseline_input"] = torch.zeros(batch)
        env.vals[name] = value


# -------------------------------------------------------------------- generation
def _coef(rng, lo=0.4, hi=1.5):
    return round(rng.choice([-1, 1]) * rng.uniform(lo, hi), 2)


def generate(seed: int, small: bool = False) -> Case:
    """A random valid case (deterministic in ``seed``). ``small``: one top-level plate, fewer
    and smaller sites, no Poisson latent (cases for the exact-gradient reference)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    features: set[str] = set()

    # plates: 1-2 top-level plates, each maybe with a nested child
    plates: dict[str, Plate] = {}
    n_top = 1 if small else rng.choice([1, 1, 2])
    for k in range(n_top):
        size = rng.choice([2, 3]) if small else rng.choice([2, 3, 3, 4])
        sub = None
        if size >= 3 and rng.random() < 0.4:
            sub = (2, 3) if size == 4 else rng.choice([(2, 3), (3, 2)])
            features.add("subsample")
        dim = rng.choice([-1, -2])
        name = f"p{k}"
        plates[name] = Plate(name, size, dim, sub)
        if rng.random() < (0.35 if small else 0.5):
            cdim = rng.choice([d for d in (-1, -2, -3) if d != dim])
            csize = 2 if small else rng.choice([2, 3])
            plates[name + "c"] = Plate(name + "c", csize, cdim, None, parent=name)
            features.add("nested")
    if n_top == 2:
        features.add("siblings")
        if plates["p0"].dim == plates["p1"].dim:
            features.add("siblings_same_dim")
    paths = []
    for p in plates.values():
        if p.parent is None:
            paths.append((p.name,))
        else:
            paths.append((p.parent, p.name))

    loops: dict[str, Loop] = {}
    if rng.random() < 0.4:
        kind = rng.choice(["plate", "markov"])
        size = 2 if small else rng.choice([2, 3])
        sub = None
        if kind == "plate" and rng.random() < 0.35:
            size, sub = (3, (2, 3)) if small else (4, (2, 3))
            features.add("seq_subsample")
        loops["t"] = Loop("t", size, kind, sub)
        features.add("seqplate" if kind == "plate" else "markov")

    latents: list[Latent] = []
    counter = {"z": 0, "x": 0, "f": 0, "b": 0}

    def new_name(kind):
        counter[kind] += 1
        return f"{kind}{counter[kind]}"

    def compatible(path, loop):
        return [
            lat
            for lat in latents
            if set(lat.path) <= set(path) and (lat.loop is None or lat.loop == loop)
        ]

    def make_latent(path, loop, chain_ok=False):
        fam = rng.choices(
            ["bernoulli", "categorical", "poisson", "normal", "gamma"],
            [3, 2, 0 if small else 1.2, 2.5, 1.5],
        )[0]
        lat = Latent(new_name("z"), fam, path, loop, coef=_coef(rng), gcoef=_coef(rng, 0.3, 1.0))
        cands = compatible(path, loop)
        if chain_ok and rng.random() < 0.7:
            lat.parent = "__prev__"
            features.add("markov_chain")
        elif cands and rng.random() < 0.65:
            lat.parent = rng.choice(cands).name
        if cands and rng.random() < 0.5:
            lat.guide_parent = rng.choice(cands).name
        if path and rng.random() < 0.15:
            lat.model_mask = True
            features.add("fn_mask")
        if path and not lat.guide_global and rng.random() < 0.1:
            lat.guide_mask = True
            features.add("fn_mask_guide")
        features.add(fam)
        latents.append(lat)
        return lat

    def make_obs(path, loop):
        cands = compatible(path, loop)
        parents = rng.sample(cands, min(len(cands), rng.choice([1, 2]))) if cands else []
        ob = Observed(
            new_name("x"),
            rng.choice(["normal", "normal", "bernoulli"]),
            path,
            loop,
            tuple(p.name for p in parents),
            tuple(_coef(rng) for _ in parents),
        )
        if path and rng.random() < 0.15:
            ob.mask = True
            features.add("fn_mask")
        return ob

    def maybe_factors(items, path, loop):
        cands = compatible(path, loop)
        if cands and rng.random() < 0.3:
            items.append(
                Factor(new_name("f"), "model", path, loop, rng.choice(cands).name, _coef(rng))
            )
            features.add("factor_model")
        if cands and rng.random() < 0.2:
            pick = rng.choice(cands)
            items.append(Factor(new_name("f"), "guide", path, loop, pick.name, _coef(rng)))
            features.add("factor_guide")

    blocks_counter = [0]

    def block(path, items):
        blocks_counter[0] += 1
        b = Block(blocks_counter[0], path, items)
        if rng.random() < 0.2:
            b.model_scale = rng.choice([0.5, 2.0])
            features.add("poutine_scale")
        if rng.random() < 0.1:
            b.guide_scale = rng.choice([0.5, 2.0])
            features.add("poutine_scale_guide")
        if path and rng.random() < 0.15:
            b.model_mask = True
            features.add("poutine_mask")
        return b

    groups: list[Group] = []
    # global block
    items = [make_latent((), None) for _ in range(1 if small else rng.choice([1, 1, 2]))]
    maybe_factors(items, (), None)
    groups.append(Group(None, [block((), items)]))

    loop_group = None
    if loops:
        loop = loops["t"]
        lblocks = []
        items = [make_latent((), "t", chain_ok=loop.kind == "markov")]
        items.append(make_obs((), "t"))
        maybe_factors(items, (), "t")
        lblocks.append(block((), items))
        if rng.random() < (0.25 if small else 0.4):
            path = rng.choice(paths)
            items = []
            if rng.random() < 0.6:
                items.append(make_latent(path, "t"))
            items.append(make_obs(path, "t"))
            lblocks.append(block(path, items))
            features.add("plate_in_loop")
        loop_group = Group(loop, lblocks)

    chosen = rng.sample(paths, rng.randint(1, len(paths)))
    plate_groups = []
    for path in chosen:
        blocks = []
        n_lat = rng.choice([0, 1, 1]) if small else rng.choice([0, 1, 1, 2])
        items = [make_latent(path, None) for _ in range(n_lat)]
        items.append(make_obs(path, None))
        maybe_factors(items, path, None)
        blocks.append(block(path, items))
        if rng.random() < 0.35:  # the same plate object entered again by another block
            items = [make_obs(path, None)]
            if not small and rng.random() < 0.5:
                items.insert(0, make_latent(path, None))
            blocks.append(block(path, items))
            features.add("plate_reuse")
        plate_groups.append(Group(None, blocks))
    if rng.random() < 0.3:  # a plate of observations only: never entered by the guide
        plates["o"] = Plate("o", rng.choice([2, 3]), -1, None)
        plate_groups.append(Group(None, [block(("o",), [make_obs(("o",), None)])]))
        features.add("model_only_plate")
    if loop_group is not None:
        plate_groups.insert(rng.randint(0, len(plate_groups)), loop_group)
    groups.extend(plate_groups)

    case = Case(seed, plates, loops, groups, features=features)
    _fill_tensors(case, gen)
    return case


def full_shape(case: Case, path, loop) -> list[int]:
    shape = [] if loop is None else [case.loops[loop].size]
    for p in sorted((case.plates[n] for n in path), key=lambda p: p.dim):
        shape.append(p.size)
    return shape


def _fill_tensors(case: Case, gen: torch.Generator) -> None:
    def randn(shape, scale=0.5, shift=0.0):
        return torch.randn(shape, generator=gen) * scale + shift

    for lat in case.latents():
        shape = full_shape(case, lat.path, lat.loop)
        if lat.family == "categorical":
            case.inits[f"m_{lat.name}"] = randn([NUM_CATEGORIES])
            case.inits[f"q_{lat.name}_a"] = randn([*shape, NUM_CATEGORIES])
        elif lat.family == "normal":
            case.inits[f"m_{lat.name}"] = randn([])
            case.inits[f"q_{lat.name}_a"] = randn(shape)
            case.inits[f"q_{lat.name}_b"] = randn(shape, 0.2, -0.5)
        elif lat.family == "gamma":
            case.inits[f"m_{lat.name}"] = randn([])
            case.inits[f"q_{lat.name}_a"] = randn(shape, 0.3, 0.8)
            case.inits[f"q_{lat.name}_b"] = randn(shape, 0.3, 0.4)
        elif lat.family == "poisson":
            case.inits[f"m_{lat.name}"] = randn([])
            case.inits[f"q_{lat.name}_a"] = randn(shape, 0.3, 0.5)
        else:
            case.inits[f"m_{lat.name}"] = randn([])
            case.inits[f"q_{lat.name}_a"] = randn(shape)
        if lat.model_mask:
            case.masks[lat.name] = torch.rand(shape, generator=gen) < 0.7
        if lat.guide_mask:
            case.masks[lat.name + "_q"] = torch.rand(shape, generator=gen) < 0.7
    for g in case.groups:
        for b in g.blocks:
            if b.model_mask:
                loop = g.loop.name if g.loop else None
                case.masks[f"block{b.bid}"] = (
                    torch.rand(full_shape(case, b.path, loop), generator=gen) < 0.7
                )
            for it in b.items:
                if isinstance(it, Observed):
                    shape = full_shape(case, it.path, it.loop)
                    if it.family == "normal":
                        case.data[it.name] = randn(shape, 1.0, 0.5)
                    else:
                        case.data[it.name] = (torch.rand(shape, generator=gen) < 0.5).float()
                    if it.mask:
                        case.masks[it.name] = torch.rand(shape, generator=gen) < 0.7


# -------------------------------------------------------------------- invalid cases
INVALID_KINDS = (
    "dim_clash",  # nested plates given the same dim
    "subsample_mismatch",  # the guide subsamples a plate to another size than the model
    "duplicate",  # two sample sites with one name
    "support",  # the guide proposes negative values for a Gamma site
    "guide_shape",  # a guide parameter of the wrong size inside its plate
    "obs_shape",  # observations of the wrong size inside their plate
    "leak",  # a site outside a plate depends on a value inside it
    "nesting",  # max_plate_nesting below the model's plate dims
    "model_only_discrete",  # a discrete latent the guide does not sample
    "event_dims",  # a plated model site sampled by the guide outside the plates, .to_event
)
ACCEPTED_KINDS = (
    "ok_model_only_continuous",  # a continuous latent only in the model: sampled from the prior
    "ok_scalar_guide_param",  # a scalar guide parameter broadcast inside a plate
)


def _applies(case: Case, kind: str) -> bool:
    lats = case.latents()
    if kind == "dim_clash":
        return any(p.parent for p in case.plates.values())
    if kind == "subsample_mismatch":
        used = {n for it in case.items() for n in it.path if isinstance(it, Latent)}
        return any(case.plates[n].subsample for n in used)
    if kind == "support":
        return any(x.family == "gamma" for x in lats)
    if kind == "guide_shape":
        return any(x.path and not x.guide_global for x in lats)
    if kind == "obs_shape":
        return case._first_plated_obs() is not None
    if kind == "leak":
        return any(x.path and x.loop is None for x in lats)
    if kind == "nesting":
        return case.nesting >= 2
    if kind == "event_dims":
        return any(
            x.path and x.loop is None and not any(case.plates[n].subsample for n in x.path)
            for x in lats
        )
    return True


def invalid_case(kind: str, seed: int) -> Case:
    """The first generated case from ``seed`` on to which ``kind`` applies, with it applied."""
    for s in range(seed, seed + 1000):
        case = generate(s)
        if not _applies(case, kind):
            continue
        case.invalid = kind
        if kind == "nesting":
            case.elbo_nesting_delta = -1
        if kind == "event_dims":
            lat = next(
                x
                for x in case.latents()
                if x.path and x.loop is None and not any(case.plates[n].subsample for n in x.path)
            )
            lat.guide_global = True
            lat.guide_mask = False
            if (
                lat.guide_parent
                and next(x for x in case.latents() if x.name == lat.guide_parent).path
            ):
                lat.guide_parent = None
        if kind == "guide_shape":
            bad = next(x for x in case.latents() if x.path and not x.guide_global)
            for key in list(case.inits):
                if key.startswith(f"q_{bad.name}_"):
                    t = case.inits[key]
                    case.inits[key] = torch.cat([t, t[:1]])  # N + 1 along the first plate axis
            if bad.loop is not None:
                case.invalid = None  # the loop axis comes first: choose another seed
                continue
        if kind in ("model_only_discrete", "ok_model_only_continuous"):
            fam = "bernoulli" if kind == "model_only_discrete" else "normal"
            extra = _ModelOnly(f"u_{fam}", fam)
            case.groups[0].blocks[0].items.append(extra)
        if kind == "ok_scalar_guide_param":
            case.invalid = kind
        return case
    raise AssertionError(f"no seed from {seed} admits {kind}")


@dataclass
class _ModelOnly:
    """A latent site sampled in the model only (the guide never sees it)."""

    name: str
    family: str
    path: tuple = ()
    loop: str | None = None
