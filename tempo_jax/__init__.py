"""tempo_jax: compiled dynamic deep learning in pure JAX with symbolic dependence graphs.

Write the algorithm for one point of time with recurrent tensors indexed symbolically
(``x[t - 1]``, ``k[0:t + 1]``, ``r[t:T]``); tempo_jax records a symbolic dependence graph
that the reference interpreter (``tj.reference.run``) evaluates point by point.

Example::

    import jax.numpy as jnp, tempo_jax as tj
    with tj.Program() as p:
        b, t = p.dims("b t")
        x0 = tj.input("x0", (4,), jnp.float32, domain=(b,))
        x = tj.placeholder((4,), jnp.float32, domain=(b, t))
        x[b, 0] = x0
        x[b, t + 1] = x[b, t] * 0.5 + 1.0
        p.output("all", x[b, 0:t.bound])
    out = tj.reference.run(p, bounds={b.bound: 3, t.bound: 10}, inputs={"x0": x0_array})
"""

from . import _reference as reference  # noqa: F401 - the public `tj.reference` namespace
from ._frontend import optim as optim
from ._frontend import random as random
from ._frontend.creation import const as const
from ._frontend.creation import full as full
from ._frontend.creation import input as input
from ._frontend.creation import ones as ones
from ._frontend.creation import ones_like as ones_like
from ._frontend.creation import placeholder as placeholder
from ._frontend.creation import sink as sink
from ._frontend.creation import zeros as zeros
from ._frontend.creation import zeros_like as zeros_like
from ._frontend.memory import keep as keep
from ._frontend.memory import offload as offload
from ._frontend.numpy_api import abs as abs
from ._frontend.numpy_api import absolute as absolute
from ._frontend.numpy_api import add as add
from ._frontend.numpy_api import all as all
from ._frontend.numpy_api import any as any
from ._frontend.numpy_api import arctan as arctan
from ._frontend.numpy_api import arctan2 as arctan2
from ._frontend.numpy_api import argmax as argmax
from ._frontend.numpy_api import argmin as argmin
from ._frontend.numpy_api import astype as astype
from ._frontend.numpy_api import broadcast_to as broadcast_to
from ._frontend.numpy_api import ceil as ceil
from ._frontend.numpy_api import clip as clip
from ._frontend.numpy_api import concatenate as concatenate
from ._frontend.numpy_api import cos as cos
from ._frontend.numpy_api import cosh as cosh
from ._frontend.numpy_api import cumprod as cumprod
from ._frontend.numpy_api import cumsum as cumsum
from ._frontend.numpy_api import divide as divide
from ._frontend.numpy_api import dot as dot
from ._frontend.numpy_api import einsum as einsum
from ._frontend.numpy_api import elu as elu
from ._frontend.numpy_api import equal as equal
from ._frontend.numpy_api import exp as exp
from ._frontend.numpy_api import exp2 as exp2
from ._frontend.numpy_api import expand_dims as expand_dims
from ._frontend.numpy_api import expm1 as expm1
from ._frontend.numpy_api import flip as flip
from ._frontend.numpy_api import floor as floor
from ._frontend.numpy_api import floor_divide as floor_divide
from ._frontend.numpy_api import gelu as gelu
from ._frontend.numpy_api import greater as greater
from ._frontend.numpy_api import greater_equal as greater_equal
from ._frontend.numpy_api import isfinite as isfinite
from ._frontend.numpy_api import isnan as isnan
from ._frontend.numpy_api import leaky_relu as leaky_relu
from ._frontend.numpy_api import less as less
from ._frontend.numpy_api import less_equal as less_equal
from ._frontend.numpy_api import lift as lift
from ._frontend.numpy_api import log as log
from ._frontend.numpy_api import log1p as log1p
from ._frontend.numpy_api import log2 as log2
from ._frontend.numpy_api import log_sigmoid as log_sigmoid
from ._frontend.numpy_api import log_softmax as log_softmax
from ._frontend.numpy_api import logical_and as logical_and
from ._frontend.numpy_api import logical_not as logical_not
from ._frontend.numpy_api import logical_or as logical_or
from ._frontend.numpy_api import logical_xor as logical_xor
from ._frontend.numpy_api import logsumexp as logsumexp
from ._frontend.numpy_api import matmul as matmul
from ._frontend.numpy_api import max as max
from ._frontend.numpy_api import maximum as maximum
from ._frontend.numpy_api import mean as mean
from ._frontend.numpy_api import min as min
from ._frontend.numpy_api import minimum as minimum
from ._frontend.numpy_api import mod as mod
from ._frontend.numpy_api import moveaxis as moveaxis
from ._frontend.numpy_api import multiply as multiply
from ._frontend.numpy_api import negative as negative
from ._frontend.numpy_api import not_equal as not_equal
from ._frontend.numpy_api import one_hot as one_hot
from ._frontend.numpy_api import outer as outer
from ._frontend.numpy_api import pad as pad
from ._frontend.numpy_api import permute_dims as permute_dims
from ._frontend.numpy_api import power as power
from ._frontend.numpy_api import prod as prod
from ._frontend.numpy_api import ravel as ravel
from ._frontend.numpy_api import reciprocal as reciprocal
from ._frontend.numpy_api import relu as relu
from ._frontend.numpy_api import relu6 as relu6
from ._frontend.numpy_api import remainder as remainder
from ._frontend.numpy_api import repeat as repeat
from ._frontend.numpy_api import reshape as reshape
from ._frontend.numpy_api import roll as roll
from ._frontend.numpy_api import round as round
from ._frontend.numpy_api import rsqrt as rsqrt
from ._frontend.numpy_api import sigmoid as sigmoid
from ._frontend.numpy_api import sign as sign
from ._frontend.numpy_api import silu as silu
from ._frontend.numpy_api import sin as sin
from ._frontend.numpy_api import sinh as sinh
from ._frontend.numpy_api import softmax as softmax
from ._frontend.numpy_api import softplus as softplus
from ._frontend.numpy_api import split as split
from ._frontend.numpy_api import sqrt as sqrt
from ._frontend.numpy_api import square as square
from ._frontend.numpy_api import squeeze as squeeze
from ._frontend.numpy_api import stack as stack
from ._frontend.numpy_api import standardize as standardize
from ._frontend.numpy_api import std as std
from ._frontend.numpy_api import subtract as subtract
from ._frontend.numpy_api import sum as sum
from ._frontend.numpy_api import swapaxes as swapaxes
from ._frontend.numpy_api import swish as swish
from ._frontend.numpy_api import take as take
from ._frontend.numpy_api import take_along_axis as take_along_axis
from ._frontend.numpy_api import tan as tan
from ._frontend.numpy_api import tanh as tanh
from ._frontend.numpy_api import tensordot as tensordot
from ._frontend.numpy_api import tile as tile
from ._frontend.numpy_api import transpose as transpose
from ._frontend.numpy_api import tril as tril
from ._frontend.numpy_api import triu as triu
from ._frontend.numpy_api import true_divide as true_divide
from ._frontend.numpy_api import var as var
from ._frontend.numpy_api import vdot as vdot
from ._frontend.numpy_api import where as where
from ._frontend.program import Program as Program
from ._frontend.tensor import RecurrentTensor as RecurrentTensor
from ._frontend.training import grad as grad
from ._frontend.training import param as param
from ._ir import errors as errors
from ._ir.bind import dynamic as dynamic
from ._ir.errors import BranchMismatchError as BranchMismatchError
from ._ir.errors import DefinitionError as DefinitionError
from ._ir.errors import DependenceCycleError as DependenceCycleError
from ._ir.errors import ForeignSymbolError as ForeignSymbolError
from ._ir.errors import IndexExprError as IndexExprError
from ._ir.errors import IndexingError as IndexingError
from ._ir.errors import InputError as InputError
from ._ir.errors import MemoryBudgetWarning as MemoryBudgetWarning
from ._ir.errors import MissingBoundError as MissingBoundError
from ._ir.errors import OutOfBoundsError as OutOfBoundsError
from ._ir.errors import OutputError as OutputError
from ._ir.errors import ScheduleInfeasibleError as ScheduleInfeasibleError
from ._ir.errors import ShapeError as ShapeError
from ._ir.errors import SliceStepError as SliceStepError
from ._ir.errors import TempoError as TempoError
from ._ir.errors import UndefinedPointError as UndefinedPointError
from ._ir.errors import UnsupportedError as UnsupportedError
from ._ir.errors import VerificationError as VerificationError
from ._ir.expr import Symbol as Symbol
from ._ir.expr import eq as eq
from ._ir.expr import ne as ne
from ._lower.buffer_plan import StoredValue as StoredValue
from ._lower.compiled import Compiled as Compiled
from ._lower.compiled import MemoryReport as MemoryReport
from ._passes.dense_grad import dense_range_grads as dense_range_grads
from ._passes.pipeline import Pipeline as Pipeline
from ._passes.tiling import tile_dynamic_ranges as tile_dynamic_ranges
from ._passes.vectorize import vectorize as vectorize
from ._schedule.cache import enable_compilation_cache as enable_compilation_cache

RT = RecurrentTensor
__version__ = "0.1.0"
