"""The jaxpr printer: one equation per line, typed binders, parameters, nested jaxprs indented.

>>> import functrax, functrax.numpy as fnp
>>> print(functrax.make_jaxpr(lambda x: fnp.sin(x) * 2.0)(fnp.zeros(3)))
{ lambda ; a:f64[3]. let
    b:f64[3] = sin a
    c:f64[3] = mul b 2.0:f64[]
  in (c,) }
"""
from __future__ import annotations

import numpy as np

from . import core


class _Names:
    """Assigns a, b, ..., z, ba, bb, ... to variables in order of appearance."""

    def __init__(self):
        self.names = {}

    def __call__(self, v):
        if type(v) is core.Literal:
            return _pp_literal(v)
        if isinstance(v, core.DropVar):
            return "_"
        name = self.names.get(v)
        if name is None:
            name = self.names[v] = _name_of(len(self.names))
        return name


def _name_of(i: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        s = letters[i % 26] + s
        i = i // 26 - 1
        if i < 0:
            return s


def _pp_literal(lit) -> str:
    val = lit.val
    if isinstance(val, (np.ndarray, np.generic)):
        val = val.item()
    return f"{val!r}:{lit.aval.str_short()}"


def _pp_param(val, names, indent) -> str:
    if isinstance(val, core.ClosedJaxpr):
        return "\n" + _pp(val.jaxpr, _Names(), indent + 4)
    if isinstance(val, core.Jaxpr):
        return "\n" + _pp(val, _Names(), indent + 4)
    if isinstance(val, (tuple, list)) and any(isinstance(v, (core.ClosedJaxpr, core.Jaxpr))
                                             for v in val):
        return "(" + ", ".join(_pp_param(v, names, indent) for v in val) + ")"
    if isinstance(val, np.dtype):
        return val.name
    if isinstance(val, type) and issubclass(val, np.generic):
        return np.dtype(val).name
    if isinstance(val, core.Primitive):
        return val.name
    return repr(val) if not callable(val) else getattr(val, "__name__", repr(val))


def _pp_binder(v, names) -> str:
    return f"{names(v)}:{v.aval.str_short()}"


def _pp(jaxpr: core.Jaxpr, names: _Names, indent: int = 0) -> str:
    pad = " " * indent
    consts = " ".join(_pp_binder(v, names) for v in jaxpr.constvars)
    args = " ".join(_pp_binder(v, names) for v in jaxpr.invars)
    lines = [f"{pad}{{ lambda {consts}; {args}. let"]
    for eqn in jaxpr.eqns:
        lhs = " ".join(_pp_binder(v, names) for v in eqn.outvars)
        params = ""
        if eqn.params:
            params = "[" + " ".join(f"{k}={_pp_param(p, names, indent + 4)}"
                                    for k, p in sorted(eqn.params.items())) + "]"
        rhs = " ".join(names(v) for v in eqn.invars)
        lines.append(f"{pad}    {lhs} = {eqn.primitive.name}{params} {rhs}".rstrip())
    outs = ", ".join(names(v) for v in jaxpr.outvars)
    if len(jaxpr.outvars) == 1:
        outs += ","
    lines.append(f"{pad}  in ({outs}) }}")
    return "\n".join(lines)


def pp_jaxpr(jaxpr: core.Jaxpr) -> str:
    return _pp(jaxpr, _Names())
