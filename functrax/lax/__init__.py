"""``functrax.lax``: the primitives, as JAX's lax. Each family lives in its own module, one
block per primitive (the ``*_p`` object, its wrapper, impl, abstract eval and rules)."""
from .elementwise import *  # noqa: F401,F403
from .elementwise import abs, max, min, pow  # noqa: F401  (names shadowing builtins)
from .structural import *  # noqa: F401,F403
from .reductions import *  # noqa: F401,F403
from .slicing import *  # noqa: F401,F403
from .slicing import slice  # noqa: F401
from .padding import *  # noqa: F401,F403
