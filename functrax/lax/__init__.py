"""``functrax.lax``: the primitives, as JAX's lax. Each family lives in its own module, one
block per primitive (the ``*_p`` object, its wrapper, impl, abstract eval and rules)."""
from .elementwise import *  # noqa: F401,F403
from .elementwise import abs, max, min, pow  # noqa: F401  (names shadowing builtins)
from .special import *  # noqa: F401,F403
from .structural import *  # noqa: F401,F403
from .reductions import *  # noqa: F401,F403
from .cumulative import *  # noqa: F401,F403
from .sorting import *  # noqa: F401,F403
from .slicing import *  # noqa: F401,F403
from .slicing import slice  # noqa: F401
from .padding import *  # noqa: F401,F403
from .indexing import *  # noqa: F401,F403
from .dot import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .windowed import *  # noqa: F401,F403
from .control_flow import *  # noqa: F401,F403
from .parallel import *  # noqa: F401,F403
from .random_bits import *  # noqa: F401,F403
from .ad_util import *  # noqa: F401,F403
from . import linalg  # noqa: F401
