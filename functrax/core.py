"""The core: abstract values, primitives and ``bind``, traces and tracers, the jaxpr IR.

Every operation in functrax is a ``Primitive``; ``Primitive.bind`` is the only door into it.
Positional arguments to ``bind`` are arrays, keyword arguments are static parameters. ``bind``
finds the innermost active interpreter (trace) among its arguments and asks it to process the
primitive. With no tracer among the arguments and no jaxpr being built, ``bind`` calls the
numpy impl directly (the eager fast path).

>>> import numpy as np
>>> from functrax import lax
>>> lax.sin(np.zeros(2))
Array([0., 0.])
"""
from __future__ import annotations

import itertools
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, NamedTuple

import numpy as np

from . import dtypes
from .array import Array

# ---------------------------------------------------------------------------------------------
# Abstract values


class ShapedArray:
    """The abstract value of an array: its shape, dtype and whether its type is weak.

    >>> ShapedArray((3, 4), np.float64).str_short()
    'f64[3,4]'
    """

    __slots__ = ("shape", "dtype", "weak_type")

    def __init__(self, shape, dtype, weak_type=False):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.weak_type = bool(weak_type)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def update(self, shape=None, dtype=None, weak_type=None):
        return ShapedArray(self.shape if shape is None else shape,
                           self.dtype if dtype is None else dtype,
                           self.weak_type if weak_type is None else weak_type)

    def strip_weak_type(self):
        return self if not self.weak_type else ShapedArray(self.shape, self.dtype, False)

    def __eq__(self, other):
        return (type(other) is ShapedArray and self.shape == other.shape
                and self.dtype == other.dtype and self.weak_type == other.weak_type)

    def __hash__(self):
        return hash((self.shape, self.dtype, self.weak_type))

    def str_short(self):
        return f"{dtypes.short_name(self.dtype)}[{','.join(map(str, self.shape))}]"

    def __repr__(self):
        weak = ", weak_type=True" if self.weak_type else ""
        return f"ShapedArray({self.shape}, {self.dtype.name}{weak})"

    def same_type(self, other):
        """Shape and dtype agree (weak type ignored), the check used for carries and tangents."""
        return self.shape == other.shape and self.dtype == other.dtype


def get_aval(x) -> ShapedArray:
    """The abstract value of a tracer, a numpy/CuPy array, a numpy scalar or a Python scalar."""
    if isinstance(x, Tracer):
        return x.aval
    t = type(x)
    if t is float or t is int or t is complex:
        return ShapedArray((), dtypes.python_scalar_dtype(x), weak_type=True)
    if t is bool:
        return ShapedArray((), np.bool_)
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return ShapedArray(shape, dtype)
    raise TypeError(
        f"Value {x!r} of type {t.__name__} is not a valid functrax type: pass arrays "
        f"(numpy, functrax.Array), numpy scalars or Python numbers.")


def is_array_like(x) -> bool:
    try:
        get_aval(x)
        return True
    except TypeError:
        return False


# ---------------------------------------------------------------------------------------------
# Source locations: every equation remembers the user's line that created it.

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_SKIP_FILES = ("contextlib.py", "functools.py")


class SourceInfo(NamedTuple):
    filename: str
    lineno: int
    function: str

    def __str__(self):
        return f"{os.path.basename(self.filename)}:{self.lineno} ({self.function})"


def _is_internal(filename: str) -> bool:
    # Tests and examples live outside the package, so they count as user code.
    return filename.startswith(_PKG_DIR) or filename.endswith(_SKIP_FILES)


def user_frame() -> SourceInfo | None:
    """The innermost stack frame outside functrax: the user's line."""
    override = _state.source_info
    if override is not None:
        return override
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if not _is_internal(fn):
            return SourceInfo(fn, f.f_lineno, f.f_code.co_name)
        f = f.f_back
    return None


@contextmanager
def source_info_context(info):
    """While a jaxpr is interpreted, new equations inherit the original equation's location."""
    prev = _state.source_info
    _state.source_info = info if info is not None else prev
    try:
        yield
    finally:
        _state.source_info = prev


def _locate(err: BaseException, info=None):
    """Append the user's line to an error message once."""
    if getattr(err, "_functrax_located", False):
        return err
    info = info or user_frame()
    if info is not None and err.args and isinstance(err.args[0], str):
        err.args = (f"{err.args[0]}\n  (at {info})",) + err.args[1:]
    try:
        err._functrax_located = True
    except AttributeError:
        pass
    return err


# ---------------------------------------------------------------------------------------------
# Primitives and bind


class Primitive:
    """A named operation with an impl (numpy), an abstract eval and rules in the rule tables.

    ``multiple_results`` primitives return a list.
    """

    multiple_results = False

    def __init__(self, name: str):
        self.name = name
        self.impl = None
        self.abstract_eval = None

    def __repr__(self):
        return self.name

    def def_impl(self, impl):
        self.impl = impl
        return impl

    def def_abstract_eval(self, rule):
        self.abstract_eval = rule
        return rule

    def bind(self, *args, **params):
        if _state.dynamic is None:
            for a in args:
                if isinstance(a, Tracer):
                    break
            else:
                # The eager fast path, inlined: it is on every eager numpy call.
                try:
                    out = self.impl(*args, **params)
                except Exception as e:
                    self._explain_eager_failure(e, args, params)
                    raise
                if self.multiple_results:
                    return [wrap_array(o) for o in out]
                t = type(out)
                if t is np.ndarray:
                    return out.view(Array)
                return out if t is Array else wrap_array(out)
        return self._bind_traced(args, params)

    def _bind_eager(self, args, params):
        try:
            out = self.impl(*args, **params)
        except Exception as e:
            self._explain_eager_failure(e, args, params)
            raise
        if self.multiple_results:
            return [wrap_array(o) for o in out]
        return wrap_array(out)

    def _explain_eager_failure(self, err, args, params):
        # The impl failed: the abstract eval usually says why in the user's terms.
        if getattr(err, "_functrax_located", False):
            return
        from .devices import check_same_device
        check_same_device(self.name, args)  # host and GPU arrays mixed: say how to fix it
        try:
            self.abstract_eval(*[get_aval(a) for a in args], **params)
        except (TypeError, ValueError) as better:
            raise _locate(better) from None
        except Exception:
            pass

    def _bind_traced(self, args, params):
        trace = find_top_trace(args)
        tracers = [trace.full_raise(a) for a in args]
        try:
            out = trace.process_primitive(self, tracers, params)
        except (TypeError, ValueError) as e:
            raise _locate(e)
        if self.multiple_results:
            return [full_lower(o) for o in out]
        return full_lower(out)

    def eval_abstract(self, *avals, **params):
        """The abstract eval, with the user's line on any error; always returns a list."""
        try:
            out = self.abstract_eval(*avals, **params)
        except (TypeError, ValueError) as e:
            raise _locate(e)
        return out if self.multiple_results else [out]


def fast_bind(prim, nargs, prepare=None):
    """A bind specialised for ``nargs`` positional operands and no parameters: the eager path of
    the hot numpy wrappers (``fnp.add``, ``fnp.sin``) without building ``*args``/``**params``.
    Anything traced goes through ``prim.bind``, after ``prepare`` (if given) has converted each
    operand (lists to arrays, say: numpy takes lists eagerly, tracing needs arrays)."""
    st = _state
    slow = prim.bind
    ndarray = np.ndarray
    prep = prepare or (lambda v: v)

    if nargs == 1:
        def bind1(x):
            if st.dynamic is None and not isinstance(x, Tracer):
                try:
                    out = prim.impl(x)
                except Exception as e:
                    prim._explain_eager_failure(e, (x,), {})
                    raise
                t = type(out)
                if t is ndarray:
                    return out.view(Array)
                return out if t is Array else wrap_array(out)
            return slow(prep(x))
        return bind1
    if nargs == 2:
        def bind2(x, y):
            if st.dynamic is None and not isinstance(x, Tracer) and not isinstance(y, Tracer):
                try:
                    out = prim.impl(x, y)
                except Exception as e:
                    prim._explain_eager_failure(e, (x, y), {})
                    raise
                t = type(out)
                if t is ndarray:
                    return out.view(Array)
                return out if t is Array else wrap_array(out)
            return slow(prep(x), prep(y))
        return bind2
    raise ValueError(f"fast_bind: {nargs} operands (only 1 or 2 are specialised)")


def wrap_array(x):
    """Eager results are ``functrax.Array`` (a numpy ndarray subclass)."""
    t = type(x)
    if t is Array:
        return x
    if t is np.ndarray:
        return x.view(Array)
    if isinstance(x, np.generic):
        return np.asarray(x).view(Array)
    if t is float or t is int or t is bool or t is complex:
        return np.asarray(x).view(Array)
    return x  # CuPy arrays and other array types pass through unchanged


# ---------------------------------------------------------------------------------------------
# Traces, tracers and the interpreter stack


class MainTrace:
    """One active interpreter on the stack: its level, its Trace class and its global data."""

    __slots__ = ("level", "trace_type", "payload")

    def __init__(self, level, trace_type, payload=None):
        self.level = level
        self.trace_type = trace_type
        self.payload = payload

    def __repr__(self):
        return f"MainTrace({self.level}, {self.trace_type.__name__})"


class Trace:
    """Interprets primitives applied to its tracers. Subclasses implement ``pure``, ``lift``
    and ``process_primitive``; control-flow and call primitives may add ``process_*`` hooks."""

    __slots__ = ("main",)

    def __init__(self, main: MainTrace):
        self.main = main

    def __repr__(self):
        return f"{type(self).__name__}(level={self.main.level})"

    def pure(self, val):
        raise NotImplementedError(f"{type(self).__name__} must define pure")

    def lift(self, val):
        raise NotImplementedError(f"{type(self).__name__} must define lift")

    def process_primitive(self, primitive, tracers, params):
        raise NotImplementedError(f"{type(self).__name__} must define process_primitive")

    def full_raise(self, val):
        if not isinstance(val, Tracer):
            return self.pure(val)
        vmain = val._trace.main
        if vmain is self.main:
            return val
        if vmain.level < self.main.level:
            return self.lift(val)
        if vmain.level > self.main.level:
            raise UnexpectedTracerError(
                f"A value traced by a {vmain.trace_type.__name__} (level {vmain.level}) reached an "
                f"outer {type(self).__name__}: a tracer escaped the transformation that created "
                f"it. Return values from transformed functions instead of storing them in "
                f"globals or closures.")
        raise UnexpectedTracerError(
            f"Different traces at the same level: {val._trace} and {self}. This is an internal "
            f"error or an escaped tracer.")

    def to_concrete(self, tracer, context):
        raise ConcretizationTypeError(tracer, context, self.transform_name())

    def transform_name(self):
        return type(self).__name__


class EvalTrace(Trace):
    """The bottom of the stack: apply the impl."""

    __slots__ = ()

    def pure(self, val):
        return val

    lift = pure

    def process_primitive(self, primitive, tracers, params):
        return primitive._bind_eager(tracers, params)


class _TraceState:
    """The interpreter stack. A plain object, not threading.local: attribute access on it is
    on the eager fast path, and tracing is not meant to run in several threads at once."""

    __slots__ = ("stack", "dynamic", "source_info")

    def __init__(self):
        self.stack = [MainTrace(0, EvalTrace, None)]
        self.dynamic = None
        self.source_info = None


_state = _TraceState()


@contextmanager
def new_main(trace_type, payload=None, dynamic=False):
    """Push an interpreter on the stack for the duration of a transformation."""
    stack = _state.stack
    main = MainTrace(len(stack), trace_type, payload)
    stack.append(main)
    prev_dynamic = _state.dynamic
    if dynamic:
        _state.dynamic = main
    try:
        yield main
    finally:
        _state.dynamic = prev_dynamic
        stack.pop()


@contextmanager
def new_base_main():
    """Hide the enclosing dynamic trace (used when an inner trace must start afresh)."""
    prev = _state.dynamic
    _state.dynamic = None
    try:
        yield
    finally:
        _state.dynamic = prev


def find_top_trace(args) -> Trace:
    top_main = _state.stack[0]
    for a in args:
        if isinstance(a, Tracer):
            m = a._trace.main
            if m.level > top_main.level:
                top_main = m
    dyn = _state.dynamic
    if dyn is not None and dyn.level > top_main.level:
        top_main = dyn
    return top_main.trace_type(top_main)


def full_lower(val):
    if isinstance(val, Tracer):
        return val.full_lower()
    return val


class Tracer:
    """A value flowing through a trace. It behaves like an array: operators, methods and
    indexing dispatch to ``functrax.numpy``. A numpy array on the left of a tracer hands the
    operation over (``__array_ufunc__ = None``), as JAX's arrays do."""

    __slots__ = ("_trace", "__weakref__")
    __array_priority__ = 1000
    __array_ufunc__ = None

    @property
    def aval(self) -> ShapedArray:
        raise NotImplementedError(f"{type(self).__name__} must define aval")

    def full_lower(self):
        return self

    shape = property(lambda self: self.aval.shape)
    dtype = property(lambda self: self.aval.dtype)
    ndim = property(lambda self: self.aval.ndim)
    size = property(lambda self: self.aval.size)
    weak_type = property(lambda self: self.aval.weak_type)

    def __len__(self):
        if not self.aval.shape:
            raise TypeError("len() of unsized object (a 0-d traced array)")
        return self.aval.shape[0]

    def __iter__(self):
        if not self.aval.shape:
            raise TypeError("iteration over a 0-d traced array")
        return (self[i] for i in range(self.aval.shape[0]))

    def __repr__(self):
        return f"Traced<{self.aval.str_short()}>with<{self._trace.transform_name()}>"

    def __hash__(self):
        raise TypeError(f"unhashable type: traced array {self.aval.str_short()}; "
                        f"use id(x) or a concrete value as a key")

    # Conversions to Python values need a concrete value: allowed under grad/jvp (the primal is
    # concrete), an error under jit and vmap.
    def __bool__(self):
        return bool(self._concrete("bool(x) (an `if` or `while` on a traced value)"))

    def __int__(self):
        return int(self._concrete("int(x)"))

    def __float__(self):
        return float(self._concrete("float(x)"))

    def __complex__(self):
        return complex(self._concrete("complex(x)"))

    def __index__(self):
        if not dtypes.is_integer(self.aval.dtype):
            raise TypeError(f"Only integer traced arrays can be used as an index, "
                            f"got {self.aval.str_short()}")
        return int(self._concrete("using x as a Python index"))

    def __array__(self, dtype=None, copy=None):
        val = np.asarray(self._concrete("np.asarray(x) (conversion to a numpy array)"))
        return val if dtype is None else val.astype(dtype)

    def _concrete(self, context):
        return self._trace.to_concrete(self, context)

    def item(self):
        return np.asarray(self._concrete("x.item()")).item()

    def tolist(self):
        return np.asarray(self._concrete("x.tolist()")).tolist()


def concrete_or_error(x, context="a concrete value is required"):
    """A concrete numpy value for x, or a ConcretizationTypeError that explains what to do."""
    if isinstance(x, Tracer):
        return x._concrete(context)
    return x


class UnexpectedTracerError(Exception):
    pass


class ConcretizationTypeError(TypeError):
    """Python needed a concrete value (``if x > 0``) but got an abstract traced one."""

    def __init__(self, tracer=None, context="", transform=""):
        if tracer is None:
            super().__init__(context)
            return
        info = user_frame()
        where = f" at {info}" if info is not None else ""
        if "Batch" in transform:
            kind = "vmap"
            fix = ("Under vmap each batch member may take a different branch: use "
                   "functrax.lax.cond / lax.select / fnp.where for branches and "
                   "lax.while_loop / lax.fori_loop for loops.")
        else:
            kind = "jit" if "Jaxpr" in transform else transform
            fix = ("Under jit a value is abstract (only its shape and dtype are known): use "
                   "functrax.lax.cond or fnp.where for branches, lax.while_loop / lax.fori_loop "
                   "for loops, or mark the argument static with static_argnums / "
                   "static_argnames.")
        msg = (f"Abstract tracer value encountered where a concrete value is expected{where}: "
               f"{context} on a traced value of type {tracer.aval.str_short()} under {kind}. "
               f"{fix}")
        super().__init__(msg)
        self._functrax_located = True


# ---------------------------------------------------------------------------------------------
# The IR


class Var:
    """A variable of a jaxpr, typed by its abstract value. Printed names are assigned by the
    printer, per jaxpr."""

    __slots__ = ("aval", "count")
    _counter = itertools.count()

    def __init__(self, aval: ShapedArray):
        self.aval = aval
        self.count = next(Var._counter)

    def __repr__(self):
        return f"Var({self.count}:{self.aval.str_short()})"


class Literal:
    """A scalar constant inlined into an equation."""

    __slots__ = ("val", "aval")

    def __init__(self, val, aval=None):
        self.val = val
        self.aval = aval if aval is not None else get_aval(val)

    def __repr__(self):
        return f"Literal({self.val})"


class DropVar(Var):
    """An output binder nobody reads."""

    __slots__ = ()


class JaxprEqn(NamedTuple):
    primitive: Primitive
    invars: list
    params: dict
    outvars: list
    source_info: SourceInfo | None = None


class Jaxpr:
    """``{ lambda constvars ; invars . let eqns in outvars }``."""

    __slots__ = ("constvars", "invars", "outvars", "eqns")

    def __init__(self, constvars, invars, outvars, eqns):
        self.constvars = list(constvars)
        self.invars = list(invars)
        self.outvars = list(outvars)
        self.eqns = list(eqns)

    @property
    def in_avals(self):
        return [v.aval for v in self.invars]

    @property
    def out_avals(self):
        return [v.aval for v in self.outvars]

    def __str__(self):
        from .pretty import pp_jaxpr
        return pp_jaxpr(self)

    __repr__ = __str__


class ClosedJaxpr:
    """A jaxpr together with the values of its constvars."""

    __slots__ = ("jaxpr", "consts")

    def __init__(self, jaxpr: Jaxpr, consts):
        assert len(jaxpr.constvars) == len(consts)
        self.jaxpr = jaxpr
        self.consts = list(consts)

    @property
    def in_avals(self):
        return self.jaxpr.in_avals

    @property
    def out_avals(self):
        return self.jaxpr.out_avals

    @property
    def eqns(self):
        return self.jaxpr.eqns

    def __str__(self):
        from .pretty import pp_jaxpr
        return pp_jaxpr(self.jaxpr)

    __repr__ = __str__

    def __call__(self, *args):
        return eval_jaxpr(self.jaxpr, self.consts, *args)


def eval_jaxpr(jaxpr: Jaxpr, consts, *args):
    """Interpret a jaxpr by binding each equation's primitive (so it runs under whatever
    transformations are active). Returns the list of outputs."""
    if len(args) != len(jaxpr.invars):
        raise TypeError(f"eval_jaxpr: expected {len(jaxpr.invars)} arguments, got {len(args)}")
    env = {}
    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x

    def read(v):
        return v.val if type(v) is Literal else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        prev = _state.source_info
        if eqn.source_info is not None:
            _state.source_info = eqn.source_info
        try:
            outs = eqn.primitive.bind(*invals, **eqn.params)
        finally:
            _state.source_info = prev
        if not eqn.primitive.multiple_results:
            outs = (outs,)
        for v, x in zip(eqn.outvars, outs):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def jaxpr_as_fun(closed: ClosedJaxpr) -> Callable:
    return lambda *args: eval_jaxpr(closed.jaxpr, closed.consts, *args)


class JaxprTypeError(TypeError):
    pass


def _avals_match(declared: ShapedArray, computed: ShapedArray) -> bool:
    return declared.shape == computed.shape and declared.dtype == computed.dtype


def typecheck_jaxpr(jaxpr) -> list:
    """Check that every variable is defined before use and every equation's output types are
    what its primitive's abstract eval says; recurse into jaxprs held in parameters. Returns
    the output avals; raises JaxprTypeError naming the equation otherwise."""
    if isinstance(jaxpr, ClosedJaxpr):
        if len(jaxpr.consts) != len(jaxpr.jaxpr.constvars):
            raise JaxprTypeError("ClosedJaxpr: number of consts and constvars differ")
        for v, c in zip(jaxpr.jaxpr.constvars, jaxpr.consts):
            if not _avals_match(v.aval, get_aval(c)):
                raise JaxprTypeError(f"const {v} has type {v.aval.str_short()} but its value is "
                                     f"{get_aval(c).str_short()}")
        jaxpr = jaxpr.jaxpr
    env = set()

    def bind_var(v):
        if v in env:
            raise JaxprTypeError(f"variable {v} bound twice")
        env.add(v)

    for v in jaxpr.constvars:
        bind_var(v)
    for v in jaxpr.invars:
        bind_var(v)
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if type(v) is not Literal and v not in env:
                raise JaxprTypeError(f"{eqn.primitive}: input {v} used before it is defined "
                                     f"(at {eqn.source_info})")
        for val in eqn.params.values():
            for sub in _subjaxprs(val):
                typecheck_jaxpr(sub)
        in_avals = [v.aval for v in eqn.invars]
        try:
            out_avals = eqn.primitive.eval_abstract(*in_avals, **eqn.params)
        except Exception as e:
            raise JaxprTypeError(f"{eqn.primitive}: abstract eval failed on inputs "
                                 f"{[a.str_short() for a in in_avals]}: {e}") from e
        if len(out_avals) != len(eqn.outvars):
            raise JaxprTypeError(f"{eqn.primitive}: {len(eqn.outvars)} binders for "
                                 f"{len(out_avals)} outputs")
        for v, a in zip(eqn.outvars, out_avals):
            if not _avals_match(v.aval, a):
                raise JaxprTypeError(f"{eqn.primitive}: binder {v.aval.str_short()} but the "
                                     f"primitive produces {a.str_short()} (at {eqn.source_info})")
            bind_var(v)
    for v in jaxpr.outvars:
        if type(v) is not Literal and v not in env:
            raise JaxprTypeError(f"output {v} is not defined")
    return [v.aval for v in jaxpr.outvars]


def _subjaxprs(val):
    if isinstance(val, (ClosedJaxpr, Jaxpr)):
        yield val
    elif isinstance(val, (tuple, list)):
        for v in val:
            if isinstance(v, (ClosedJaxpr, Jaxpr)):
                yield v


def subjaxprs_of_eqn(eqn):
    for val in eqn.params.values():
        yield from _subjaxprs(val)


# ---------------------------------------------------------------------------------------------
# Tracing to a jaxpr (used by make_jaxpr and jit, and as the recorder of linearize)


class JaxprTracer(Tracer):
    """A value being recorded into a jaxpr: only its abstract value is known."""

    __slots__ = ("_aval",)

    def __init__(self, trace, aval):
        self._trace = trace
        self._aval = aval

    @property
    def aval(self):
        return self._aval


class JaxprBuilder:
    """Collects equations, constants and variables while a function is traced."""

    def __init__(self, partial=False):
        # partial=True: the recorder of linearize / partial evaluation, where values from
        # outer traces are *known* and primitives with bodies may split into known and unknown.
        self.partial = partial
        self.eqns = []
        self.tracer_to_var = {}  # id(tracer) -> Var
        self.const_tracers = {}  # id(const value) -> tracer (dedup repeated consts)
        self.constvar_to_val = {}  # Var -> value
        self.keepalive = []

    def new_tracer(self, trace, aval):
        t = JaxprTracer(trace, aval)
        self.keepalive.append(t)
        return t

    def add_var(self, tracer):
        v = Var(tracer.aval)
        self.tracer_to_var[id(tracer)] = v
        return v

    def getvar(self, tracer):
        return self.tracer_to_var[id(tracer)]

    def add_const(self, tracer, val):
        v = self.add_var(tracer)
        self.constvar_to_val[v] = val
        self.keepalive.append(val)
        return v

    def build(self, in_tracers, out_tracers):
        invars = [self.getvar(t) for t in in_tracers]
        outvars = [self.getvar(t) for t in out_tracers]
        constvars, constvals = list(self.constvar_to_val), list(self.constvar_to_val.values())
        jaxpr = Jaxpr(constvars, invars, outvars, self.eqns)
        return _inline_literals(jaxpr, constvals)


def _is_scalar_literal(val) -> bool:
    t = type(val)
    if t is int or t is float or t is bool or t is complex:
        return True
    return isinstance(val, (np.ndarray, np.generic)) and np.ndim(val) == 0


def _inline_literals(jaxpr: Jaxpr, consts):
    """Scalar constants become literals in the equations, so the printout reads `mul b 2.0`."""
    lits = {}
    keep_vars, keep_vals = [], []
    outset = {id(v) for v in jaxpr.outvars}
    for v, c in zip(jaxpr.constvars, consts):
        if _is_scalar_literal(c) and id(v) not in outset:
            lits[v] = Literal(c, v.aval)
        else:
            keep_vars.append(v)
            keep_vals.append(c)
    if not lits:
        return jaxpr, consts
    eqns = [eqn._replace(invars=[lits.get(x, x) if type(x) is not Literal else x
                                 for x in eqn.invars]) for eqn in jaxpr.eqns]
    return Jaxpr(keep_vars, jaxpr.invars, jaxpr.outvars, eqns), keep_vals


class JaxprTrace(Trace):
    """Records every primitive applied to its tracers as an equation. Values from outer
    traces or concrete arrays that meet its tracers become constants of the jaxpr.

    As the *dynamic* trace (make_jaxpr, jit), it records every operation, even those on
    constants only; as an ordinary trace (the recorder of linearize), it records only the
    operations that involve its own tracers."""

    __slots__ = ()

    @property
    def builder(self) -> JaxprBuilder:
        return self.main.payload

    def new_arg(self, aval):
        b = self.builder
        t = b.new_tracer(self, aval)
        b.add_var(t)
        return t

    def pure(self, val):
        b = self.builder
        key = id(val)
        t = b.const_tracers.get(key)
        if t is None:
            t = b.new_tracer(self, get_aval(val))
            b.const_tracers[key] = t
            b.add_const(t, val)
        return t

    lift = pure

    def process_primitive(self, primitive, tracers, params):
        if self.builder.partial:
            rule = partial_eval_rules.get(primitive)
            if rule is not None:
                return rule(self, tracers, params)
        avals_in = [t.aval for t in tracers]
        avals_out = primitive.eval_abstract(*avals_in, **params)
        outs = self.record_eqn(primitive, tracers, params, avals_out)
        return outs if primitive.multiple_results else outs[0]

    def to_concrete(self, tracer, context):
        raise ConcretizationTypeError(tracer, context, "JaxprTrace")

    def transform_name(self):
        return "JaxprTrace"


    def known_value(self, tracer):
        """(True, value) when ``tracer`` stands for a value known outside this recorder (a
        constant lifted from an outer trace or a concrete array), else (False, None)."""
        v = self.builder.tracer_to_var.get(id(tracer))
        cv = self.builder.constvar_to_val
        if v is not None and v in cv:
            return True, cv[v]
        return False, None

    def record_eqn(self, primitive, tracers, params, avals_out):
        """Append an equation and return its output tracers."""
        b = self.builder
        invars = [b.getvar(t) for t in tracers]
        outs = [b.new_tracer(self, a) for a in avals_out]
        outvars = [b.add_var(t) for t in outs]
        b.eqns.append(JaxprEqn(primitive, invars, params, outvars, user_frame()))
        return outs


# Partial evaluation rules, read by a JaxprTrace that records the unknown part of a
# computation (linearize): primitives with bodies (jit, scan, cond, while, custom rules) split
# into a known part evaluated now and an unknown part recorded. ``rule(trace, tracers, params)``
# returns the outputs: known ones as plain outer values, unknown ones as tracers of the trace.
partial_eval_rules: dict = {}


def trace_to_jaxpr(fun: Callable, in_avals):
    """Trace ``fun`` (which takes and returns flat lists of arrays) to a jaxpr, recording every
    operation, including those on constants (jit and make_jaxpr semantics).

    Returns (jaxpr, consts, out_avals)."""
    with new_main(JaxprTrace, JaxprBuilder(), dynamic=True) as main:
        trace = JaxprTrace(main)
        in_tracers = [trace.new_arg(a) for a in in_avals]
        outs = fun(*in_tracers)
        out_tracers = [trace.full_raise(o) for o in outs]
        jaxpr, consts = main.payload.build(in_tracers, out_tracers)
    return jaxpr, consts, [t.aval for t in out_tracers]


def convert_constvars_jaxpr(jaxpr: Jaxpr) -> Jaxpr:
    """Turn constvars into leading invars (to pass closed-over values explicitly)."""
    return Jaxpr([], jaxpr.constvars + jaxpr.invars, jaxpr.outvars, jaxpr.eqns)


def closed_jaxpr_from_fun(fun, in_avals) -> ClosedJaxpr:
    jaxpr, consts, _ = trace_to_jaxpr(fun, in_avals)
    return ClosedJaxpr(jaxpr, consts)


# ---------------------------------------------------------------------------------------------
# Small helpers shared by the rules


def zeros_like_aval(aval: ShapedArray):
    from . import lax
    return lax.full(aval.shape, 0, aval.dtype)


def canonicalize_shape(shape, context="shape") -> tuple:
    """A tuple of non-negative ints from an int, a sequence, or concrete arrays."""
    try:
        if isinstance(shape, (int, np.integer)) or (isinstance(shape, Tracer) and shape.ndim == 0):
            shape = (shape,)
        out = tuple(int(concrete_or_error(d, f"{context} must be static")) for d in shape)
    except TypeError as e:
        if isinstance(e, ConcretizationTypeError):
            raise
        raise TypeError(f"{context} must be a sequence of integers, got {shape!r}") from None
    if any(d < 0 for d in out):
        raise ValueError(f"{context} must be non-negative, got {out}")
    return out
