"""Where a guide's parameters live: ``PyroParam`` attributes of the guide, as in Pyro's autoguides.

Site ``z``'s parameter ``loc`` is the attribute ``guide.z.loc`` (``deep_setattr``), hence in
``guide.parameters()`` and ``state_dict()`` (key ``z.loc_unconstrained``), pickled with the
guide, and mirrored in Pyro's param store as ``<guide name>.z.loc`` while the guide runs.

Pyro's mirror lets a guide pick up whatever tensor the store holds under its names: values the
user put there (``store[name] = value``, ``store.load``), but also another guide's, when two guides
of one class fit one model. :func:`reclaim` keeps the first and refuses the second: each guide
records the tensors it owns (by weak reference, so nothing travels with a pickled tensor), and a
store entry that another guide owns is dropped before the guide reads its parameters, so the
guide puts its own back.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator

import pyro
import torch
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam
from pyro.ops.tensor_utils import periodic_repeat

_tokens = itertools.count()
_OWNERS: dict[int, tuple[weakref.ref, int]] = {}  # id(tensor) -> (weak reference, owner token)


def new_token() -> int:
    """A token unique to one guide instance in this process."""
    return next(_tokens)


def check_site_names(guide: PyroModule, names) -> None:
    """Refuse a site whose name is taken by one of the guide's own attributes (its parameters
    would live at ``guide.<site>``)."""
    taken = set(dir(guide))
    for name in names:
        root = name.split(".")[0]
        if root in taken:
            raise ValueError(
                f"{type(guide).__name__}: site {name!r} has the name of the guide's attribute "
                f"{root!r}, where the site's parameters would be kept; rename the site in the "
                f"model (e.g. {root + '_'!r})"
            )


def set_param(
    guide: PyroModule, token: int, site: str, key: str, init, constraint, event_dim: int
) -> None:
    """``guide.<site>.<key> = PyroParam(init, constraint, event_dim)``. Set while the guide runs,
    a ``PyroParam`` takes the store's tensor of its name when there is one: unless another
    guide owns it."""
    _release(f"{guide._pyro_name}.{site}.{key}", None, token)
    deep_setattr(guide, f"{site}.{key}", PyroParam(init, constraint, event_dim))


def full_size(value: torch.Tensor, site: dict, event_dim: int) -> torch.Tensor:
    """``value`` repeated periodically to the full size of each subsampled plate of ``site``
    (the prototype trace saw one subsample; ``event_dim`` dims on the right are not plates)."""
    value = value.detach()
    for frame in site["cond_indep_stack"]:
        full = frame.full_size or frame.size
        if frame.vectorized and full != frame.size:
            value = periodic_repeat(value, full, frame.dim - event_dim)
    return value.contiguous()


def owned(guide: PyroModule) -> Iterator[tuple[str, torch.Tensor]]:
    """``(param store name, tensor)`` of every parameter of ``guide``: its ``PyroParam``\\ s
    (unconstrained tensors), plain ``nn.Parameter``\\ s of its ``PyroModule``\\ s, and the
    parameters of plain ``nn.Module`` children (``pyro.module`` names, ``<module>$$$<param>``)."""
    for module in guide.modules():
        if not isinstance(module, PyroModule):
            continue
        for attr, tensor in module._parameters.items():
            constrained = attr.removesuffix("_unconstrained")
            if tensor is not None and (constrained == attr or constrained in module._pyro_params):
                yield f"{module._pyro_name}.{constrained}", tensor
        for attr, child in module._modules.items():
            if child is not None and not isinstance(child, PyroModule):
                for pname, p in child.named_parameters():
                    yield f"{module._pyro_name}.{attr}$$${pname}", p


def _owner(tensor: torch.Tensor) -> int | None:
    entry = _OWNERS.get(id(tensor))
    return entry[1] if entry is not None and entry[0]() is tensor else None


def claim(guide: PyroModule, token: int) -> None:
    """Record ``token`` as the owner of the guide's tensors that have none yet (fresh ones, and
    those the guide took over from the store)."""
    for _, tensor in owned(guide):
        if _owner(tensor) is None:
            key = id(tensor)
            _OWNERS[key] = (weakref.ref(tensor, lambda _, key=key: _OWNERS.pop(key, None)), token)


def reclaim(guide: PyroModule, token: int) -> None:
    """Drop the store entries under the guide's names that hold another guide's tensors."""
    claim(guide, token)
    for name, tensor in owned(guide):
        _release(name, tensor, token)


def _release(name: str, own: torch.Tensor | None, token: int) -> None:
    store = pyro.get_param_store()
    held = store._params.get(name)
    if held is not None and held is not own and _owner(held) not in (None, token):
        del store[name]
