"""``tj.*`` functions mirroring ``jax.numpy`` / ``jax.nn``, applied point-wise to RTs.

Each function records one op whose payload is the JAX function itself; with no symbolic
argument it simply calls the JAX function. :func:`lift` does the same for any function.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._ir.expr import Expr
from .._ir.expr import maximum as _max_index
from .._ir.expr import minimum as _min_index
from .._ir.source import capture_source
from .tensor import record


def lift(fn: Callable[..., Any], *, name: str | None = None) -> Callable[..., Any]:
    """Apply any JAX function (pytree in, pytree out) point-wise to recurrent tensors.

    RTs and index expressions anywhere in the arguments become inputs; everything else is
    closed over as a constant. The result's domain is the union of the inputs' domains.

    Example::

        step = tj.lift(env.step)              # a gymnax environment step
        obs, state, r, done, info = step(key, state[b, t], action[b, t], params)
    """
    label = name or getattr(fn, "__name__", type(fn).__name__)

    @functools.wraps(fn)
    def lifted(*args: Any, **kwargs: Any) -> Any:
        return record(fn, args, kwargs, name=label, source=capture_source())

    return lifted


def _mirror(fn: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    label = name or fn.__name__
    module = "jax.nn" if fn.__module__.startswith("jax._src.nn") else "jax.numpy"

    def mirrored(*args: Any, **kwargs: Any) -> Any:
        return record(fn, args, kwargs, name=label, source=capture_source())

    mirrored.__name__ = mirrored.__qualname__ = label
    mirrored.__doc__ = f"`{module}.{fn.__name__}` applied point-wise to recurrent tensors."
    return mirrored


# -- element-wise math ----------------------------------------------------------------------
abs = _mirror(jnp.abs)
absolute = _mirror(jnp.absolute)
negative = _mirror(jnp.negative)
sign = _mirror(jnp.sign)
exp = _mirror(jnp.exp)
exp2 = _mirror(jnp.exp2)
expm1 = _mirror(jnp.expm1)
log = _mirror(jnp.log)
log1p = _mirror(jnp.log1p)
log2 = _mirror(jnp.log2)
sqrt = _mirror(jnp.sqrt)
rsqrt = _mirror(jax.lax.rsqrt, "rsqrt")
square = _mirror(jnp.square)
reciprocal = _mirror(jnp.reciprocal)
sin = _mirror(jnp.sin)
cos = _mirror(jnp.cos)
tan = _mirror(jnp.tan)
arctan = _mirror(jnp.arctan)
sinh = _mirror(jnp.sinh)
cosh = _mirror(jnp.cosh)
tanh = _mirror(jnp.tanh)
floor = _mirror(jnp.floor)
ceil = _mirror(jnp.ceil)
round = _mirror(jnp.round)
isnan = _mirror(jnp.isnan)
isfinite = _mirror(jnp.isfinite)
add = _mirror(jnp.add)
subtract = _mirror(jnp.subtract)
multiply = _mirror(jnp.multiply)
divide = _mirror(jnp.divide)
true_divide = _mirror(jnp.true_divide)
floor_divide = _mirror(jnp.floor_divide)
mod = _mirror(jnp.mod)
remainder = _mirror(jnp.remainder)
power = _mirror(jnp.power)
maximum = _mirror(jnp.maximum)
minimum = _mirror(jnp.minimum)
arctan2 = _mirror(jnp.arctan2)
clip = _mirror(jnp.clip)
where = _mirror(jnp.where)
astype = _mirror(jnp.astype)

# -- comparisons and logic ------------------------------------------------------------------
equal = _mirror(jnp.equal)
not_equal = _mirror(jnp.not_equal)
less = _mirror(jnp.less)
less_equal = _mirror(jnp.less_equal)
greater = _mirror(jnp.greater)
greater_equal = _mirror(jnp.greater_equal)
logical_and = _mirror(jnp.logical_and)
logical_or = _mirror(jnp.logical_or)
logical_xor = _mirror(jnp.logical_xor)
logical_not = _mirror(jnp.logical_not)

# -- reductions and scans over spatial axes ---------------------------------------------------
sum = _mirror(jnp.sum)
mean = _mirror(jnp.mean)
prod = _mirror(jnp.prod)
std = _mirror(jnp.std)
var = _mirror(jnp.var)
argmax = _mirror(jnp.argmax)
argmin = _mirror(jnp.argmin)
any = _mirror(jnp.any)
all = _mirror(jnp.all)
logsumexp = _mirror(jax.nn.logsumexp)
cumsum = _mirror(jnp.cumsum)
cumprod = _mirror(jnp.cumprod)
_max_reduce = _mirror(jnp.max, "max")
_min_reduce = _mirror(jnp.min, "min")

# -- linear algebra -------------------------------------------------------------------------
matmul = _mirror(jnp.matmul)
dot = _mirror(jnp.dot)
vdot = _mirror(jnp.vdot)
outer = _mirror(jnp.outer)
einsum = _mirror(jnp.einsum)
tensordot = _mirror(jnp.tensordot)

# -- movement -------------------------------------------------------------------------------
reshape = _mirror(jnp.reshape)
ravel = _mirror(jnp.ravel)
transpose = _mirror(jnp.transpose)
permute_dims = _mirror(jnp.permute_dims)
moveaxis = _mirror(jnp.moveaxis)
swapaxes = _mirror(jnp.swapaxes)
expand_dims = _mirror(jnp.expand_dims)
squeeze = _mirror(jnp.squeeze)
broadcast_to = _mirror(jnp.broadcast_to)
concatenate = _mirror(jnp.concatenate)
stack = _mirror(jnp.stack)
split = _mirror(jnp.split)
pad = _mirror(jnp.pad)
flip = _mirror(jnp.flip)
roll = _mirror(jnp.roll)
tile = _mirror(jnp.tile)
repeat = _mirror(jnp.repeat)
take = _mirror(jnp.take)
take_along_axis = _mirror(jnp.take_along_axis)
tril = _mirror(jnp.tril)
triu = _mirror(jnp.triu)

# -- neural-network functions (jax.nn) ------------------------------------------------------
softmax = _mirror(jax.nn.softmax)
log_softmax = _mirror(jax.nn.log_softmax)
one_hot = _mirror(jax.nn.one_hot)
relu = _mirror(jax.nn.relu)
relu6 = _mirror(jax.nn.relu6)
gelu = _mirror(jax.nn.gelu)
silu = _mirror(jax.nn.silu)
swish = _mirror(jax.nn.swish)
sigmoid = _mirror(jax.nn.sigmoid)
log_sigmoid = _mirror(jax.nn.log_sigmoid)
softplus = _mirror(jax.nn.softplus)
elu = _mirror(jax.nn.elu)
leaky_relu = _mirror(jax.nn.leaky_relu)
standardize = _mirror(jax.nn.standardize)


def _all_index_like(args: tuple[Any, ...]) -> bool:
    index_like = [isinstance(a, Expr | int) and not isinstance(a, bool) for a in args]
    return builtins.all(index_like) and builtins.any(isinstance(a, Expr) for a in args)


def max(*args: Any, **kwargs: Any) -> Any:
    """Symbolic max of index expressions, or the ``jax.numpy.max`` reduction of a tensor.

    ``tj.max(0, t - w + 1)`` is an index expression; ``tj.max(x, axis=-1)`` reduces ``x``.
    """
    if len(args) >= 2 and not kwargs and _all_index_like(args):
        return _max_index(*args)
    return _max_reduce(*args, **kwargs)


def min(*args: Any, **kwargs: Any) -> Any:
    """Symbolic min of index expressions, or the ``jax.numpy.min`` reduction of a tensor.

    ``tj.min(t + 10, T - 1)`` is an index expression; ``tj.min(x, axis=-1)`` reduces ``x``.
    """
    if len(args) >= 2 and not kwargs and _all_index_like(args):
        return _min_index(*args)
    return _min_reduce(*args, **kwargs)
