"""functrax: JAX-style composable transformations (grad, jit, vmap, ...) on numpy and numba.

>>> import functrax as ft, functrax.numpy as fnp
>>> ft.grad(lambda x: fnp.sin(x) * x)(0.0)
Array(0.)
"""
from . import core, dtypes, lax, tree_util  # noqa: F401
from . import numpy as numpy  # noqa: F401  (functrax.numpy)
from .api import (ShapeDtypeStruct, eval_shape, grad, hessian, jacfwd, jacrev, jvp,  # noqa: F401
                  linearize, make_jaxpr, value_and_grad, vjp, vmap)
from .array import Array  # noqa: F401
from .core import ClosedJaxpr, Jaxpr, typecheck_jaxpr, eval_jaxpr  # noqa: F401
from .interpreters.jvp import Zero  # noqa: F401
from .numpy import array_methods as _array_methods
from . import tree  # noqa: F401
from .jit import *  # noqa: F401,F403
from .devices import *  # noqa: F401,F403
from .custom_derivatives import *  # noqa: F401,F403
from .remat import *  # noqa: F401,F403
from . import random, nn, optim, checkpoints, test_util  # noqa: F401,E402

_array_methods.install()

__version__ = "0.1.0"
