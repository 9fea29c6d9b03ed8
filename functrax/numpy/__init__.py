"""``functrax.numpy``: the numpy API, written over ``functrax.lax``.

Eager calls return ``functrax.Array`` (a numpy ndarray subclass); under a transformation the
same calls are traced. Dtypes follow numpy (float64 default, NEP 50 promotion).

>>> import functrax.numpy as fnp
>>> fnp.sin(fnp.zeros(2))
Array([0., 0.])
"""
from numpy import (bool_, complex64, complex128, dtype, finfo, float16, float32, float64,  # noqa
                   iinfo, int8, int16, int32, int64, issubdtype, uint8, uint16, uint32, uint64,
                   e, euler_gamma, inf, nan, pi, newaxis, integer, floating, inexact, number,
                   signedinteger, unsignedinteger, complexfloating, ndarray, result_type,
                   promote_types, can_cast)
from numpy import bool_ as bool  # noqa: A001
from ..array import Array  # noqa: F401
from .ufuncs import *  # noqa: F401,F403
from .ufuncs import abs  # noqa: F401
from .creation import *  # noqa: F401,F403
from .reductions import *  # noqa: F401,F403
from .reductions import sum, max, min  # noqa: F401
from .shape_ops import *  # noqa: F401,F403
from .indexing import *  # noqa: F401,F403
from .sorting import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .misc import *  # noqa: F401,F403
from . import linalg  # noqa: F401
