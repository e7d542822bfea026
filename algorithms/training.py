"""A training run as a pure function of a PRNG key and of where the run stands.

Every algorithm's program takes two kinds of input:

- ``key``: a ``uint32[2]`` PRNG key, the run's one source of randomness. The rollout and
  minibatch keys are derived from it inside the program, folded with the *global* iteration
  number, as the single-jit baselines derive them;
- the :class:`State` the run starts from: parameters, optimiser state, each environment's
  observation, state and running return, and the number of iterations already done.

:func:`initial_state` makes the state at iteration 0 from the key (plain JAX: the network's
initial parameters, ``tx.init``, the environments' resets), so ``train(key)`` is the run of
a seed and ``train(key, state)`` continues a run: running ``N`` iterations from the state
another ``N`` left gives the ``2N``-iteration run (the same keys, the same numbers). The
state comes back as the output ``"state"``: it is what a checkpoint stores.

    train = ppo.make_train(config)                   # built once
    out = train()                                    # the seed of config.seed
    out = train(jax.random.PRNGKey(7))               # seed 7, same executable
    more = train(key, out["state"])                  # the next iterations of that run
    out = jax.jit(train)(key)                        # traceable
    outs = jax.vmap(train)(keys)                     # seeds side by side (purejaxrl's way)

A third input, ``run`` (an int32, 0 by default), only reaches the metrics sink: under
``jax.vmap`` a sink is called once per seed, and ``run`` says which.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import tempo_jax as tj

from .config import RLConfig
from .envs import Env
from .networks import ActorCritic

KEY = "key"  # the name of every algorithm's key input
RUN = "run"  # an int32 the sinks pass on (which run of a batch: jax.vmap over seeds)
STATE = "state"  # the prefix of the state inputs, and the name of the state output


class State(NamedTuple):
    """Where a run stands after ``iteration`` iterations: all the next iteration needs."""

    params: Any
    opt_state: Any
    obs: jax.Array  # (B, *obs_shape): each environment's next observation
    env_state: Any  # leaves (B, ...)
    running: jax.Array  # (B,): the return so far of each environment's current episode
    iteration: jax.Array  # int32 scalar: iterations done


def initial_state(config: RLConfig, env: Env, net: ActorCritic, key: jax.Array) -> State:
    """The state before iteration 0 of the run of ``key`` (plain JAX, traceable): the keys
    are those the program derives (``init, run = split(key)``, ``reset = split(run, 3)[0]``,
    environment ``b`` reset with ``fold_in(reset, b)``)."""
    init_key, run_key = jax.random.split(key)
    reset_key = jax.random.split(run_key, 3)[0]

    # one key at a time under ``jax.vmap``: the orthogonal initialisers' QR is a LAPACK call
    # that jaxlib's CPU kernel, batched, fans out over XLA's intra-op thread pool and blocks
    # on; two at once can hold every thread of a small pool and never finish (jaxlib 0.10.2,
    # 2 cores). Unbatched, each QR runs inline.
    @jax.custom_batching.sequential_vmap
    def init(k: jax.Array) -> Any:
        return net.init(k, env.reset(jax.random.PRNGKey(0))[0])

    params = init(init_key)
    resets = jax.vmap(lambda b: jax.random.fold_in(reset_key, b))(jnp.arange(config.envs))
    obs, env_state = jax.vmap(env.reset)(resets)
    running = jnp.zeros((config.envs,), jnp.float32)
    opt_state = config.optimiser().init(params)
    return State(params, opt_state, obs, env_state, running, jnp.zeros((), jnp.int32))


def state_shape(config: RLConfig, env: Env, net: ActorCritic, seeds: int = 1) -> State:
    """The shapes and dtypes of :func:`initial_state` (nothing computed); with ``seeds > 1``,
    of the states of that many seeds side by side (a leading seed axis)."""

    def start(key: jax.Array) -> State:
        return initial_state(config, env, net, key)

    key = jax.ShapeDtypeStruct((2,) if seeds == 1 else (seeds, 2), jnp.uint32)
    return jax.eval_shape(jax.vmap(start) if seeds > 1 else start, key)


def iterations_done(state: State) -> int:
    """The iterations a state has done (seeds side by side: the same count for each)."""
    return int(np.asarray(state.iteration).reshape(-1)[0])


def key_input() -> tj.RT:
    """The program's ``key`` input: a ``uint32[2]`` PRNG key."""
    return tj.input(KEY, (2,), jnp.uint32)


def run_input() -> tj.RT:
    """The program's ``run`` input: an int32 scalar the metrics sink reports as ``"run"``
    (0 unless given: ``jax.vmap(lambda k, r: train(k, run=r))(keys, jnp.arange(n))`` tells
    the seeds' calls apart)."""
    return tj.input(RUN, (), jnp.int32)


def state_input(example: State, b: tj.Symbol) -> State:
    """The program's state inputs, shaped like ``example`` (arrays or shape structs): one
    input per leaf (``state0``, ``state1``, ...); the per-environment fields are tensors over
    ``b``."""
    per_env = {"obs", "env_state", "running"}
    out, k = {}, 0
    for field in State._fields:
        leaves, tree = jax.tree_util.tree_flatten(getattr(example, field))
        made = []
        for leaf in leaves:
            if field in per_env:
                made.append(tj.input(f"{STATE}{k}", leaf.shape[1:], leaf.dtype, domain=(b,)))
            else:
                made.append(tj.input(f"{STATE}{k}", leaf.shape, leaf.dtype))
            k += 1
        out[field] = jax.tree_util.tree_unflatten(tree, made)
    return State(**out)


def output_state(
    p: tj.Program, params: Any, opt_state: Any, end: tuple[Any, Any, Any], start: State, dims: tuple
) -> None:
    """The output ``"state"``: where the run stands after its last iteration (``params`` and
    ``opt_state`` already read there; ``end`` is the rollout's per-iteration ``(obs, env
    state, running return)`` over ``(i, b)``)."""
    i, b = dims[0], dims[1]
    last = jax.tree_util.tree_map(
        lambda x: x[i.bound - 1, 0 : b.bound], end, is_leaf=lambda x: isinstance(x, tj.RT)
    )
    done = start.iteration + i.bound
    p.output(STATE, State(params, opt_state, *last, done))


def split(key: Any, n: int = 2, name: str = "split") -> tuple[tj.RT, ...]:
    """``jax.random.split(key, n)`` inside the program (``key`` a tensor or an array), as
    ``n`` keys."""
    return tj.lift(lambda k: tuple(jax.random.split(k, n)), name=name)(key)


def fold_in(key: Any, data: int) -> tj.RT:
    """``jax.random.fold_in(key, data)`` inside the program."""
    return tj.lift(lambda k: jax.random.fold_in(k, data), name="fold_in")(key)


def key_at(key: tj.RT, dims: tuple[tj.Symbol, ...], first: tj.RT) -> tj.RT:
    """``key`` folded with the point of ``dims`` (iteration dim first), the iteration counted
    from ``first``: ``fold_in(fold_in(key, first + i), ...)``, the keys of a run whatever
    iteration it resumes from. One op per fold, each over the dims it has folded in so far:
    the key of an iteration is made once per iteration, not again at every step of it."""
    i, *rest = dims
    fold = tj.lift(jax.random.fold_in, name="fold_in")
    folded = fold(key, first + i)
    for x in rest:
        folded = fold(folded, x)
    return folded


@dataclasses.dataclass(eq=False)  # hashable: jax.jit(train) works
class Train:
    """A compiled training run, called as a function of its PRNG key and, optionally, the
    :class:`State` to continue from: ``train(key, state)`` (``train()`` for
    ``jax.random.PRNGKey(seed)`` from the start) returns the outputs, ``"state"`` among them.
    Pure and traceable: ``jax.jit(train)``, and ``jax.vmap(train)(keys)`` runs seeds side by
    side (a sink is then called once per seed, in order; ``run`` tells them apart). The
    compiled program's other methods (``ahead_of_time``, ``lower``, ``memory``, ``explain``,
    ...) are reachable as attributes. ``iterations`` is how many iterations one call runs."""

    compiled: tj.Compiled
    seed: int
    start: Callable[[jax.Array], State]  # the state at iteration 0 of a key's run
    iterations: int
    # (seed, that seed's start): computed (XLA-compiled first) on a second thread while the
    # program was built (:func:`compile_run` starts it before the build)
    first: tuple[int, concurrent.futures.Future] | None = None

    def key(self, key: jax.Array | None = None) -> jax.Array:
        """``key``, or the config's seed's key."""
        return jax.random.PRNGKey(self.seed) if key is None else key

    def state(self, key: jax.Array | None = None) -> State:
        """The state at iteration 0 of the run of ``key`` (default: the seed's key)."""
        if key is None and self.first is not None and self.first[0] == self.seed:
            return self.first[1].result()
        return self.start(self.key(key))

    def inputs(
        self, key: jax.Array | None = None, state: State | None = None, run: Any = 0
    ) -> dict:
        """The program's inputs for ``key``, ``state`` (default: the key's start) and
        ``run`` (the index the sink reports)."""
        state = self.state(key) if state is None else state
        key = self.key(key)
        leaves = jax.tree_util.tree_leaves(state)
        given = {KEY: key, RUN: jnp.asarray(run, jnp.int32)}
        return {**given, **{f"{STATE}{k}": leaf for k, leaf in enumerate(leaves)}}

    def __call__(
        self, key: jax.Array | None = None, state: State | None = None, run: Any = 0
    ) -> dict:
        return self.compiled(**self.inputs(key, state, run))

    def ahead_of_time(self) -> Callable[..., dict[str, Any]]:
        """XLA-compile now; the returned function is called like this one.

        On one device the initial state (its own XLA computation) has been compiling on a
        second thread since the build began (:attr:`first`): the program lowers and compiles
        for its shapes meanwhile."""
        if self.first is None:  # inputs laid out over a mesh: one at a time
            compiled = self.compiled.ahead_of_time(**self.inputs())
        else:
            shapes = jax.eval_shape(self.start, self.key())
            compiled = self.compiled.ahead_of_time(**self.inputs(None, shapes))
            self.state()
        return lambda key=None, state=None, run=0: compiled(**self.inputs(key, state, run))

    def lower(self, key: jax.Array | None = None, state: State | None = None) -> Any:
        """The lowering for a key (``.compile().memory_analysis()`` works)."""
        return self.compiled.lower(**self.inputs(key, state))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.compiled, name)


def compile_run(
    built: Any,
    config: RLConfig,
    env: Env,
    net: ActorCritic,
    iterations: int | None = None,
    **options: Any,
) -> Train:
    """``built`` (an algorithm's recorded program, its dims and bounds) compiled as a
    :class:`Train` running ``iterations`` per call (default: the config's, the whole run);
    ``options`` go to ``Program.compile`` (e.g. ``memory_budget``)."""
    if iterations is not None and not 1 <= iterations <= config.iterations:
        raise ValueError(f"iterations per call must be 1 to {config.iterations}, got {iterations}")
    count = config.iterations if iterations is None else iterations
    mesh = device_mesh(config)
    if mesh is not None:  # the envs dim split over the devices
        options = {"mesh": mesh, "shard": {built.dims[1].name: "data"}, **options}
    first = None
    if mesh is None and "mesh" not in options:
        # the seed's start compiles and runs on a second thread while the program builds
        start = jax.jit(lambda key: initial_state(config, env, net, key))
        pool = concurrent.futures.ThreadPoolExecutor(1)
        first = (config.seed, pool.submit(start, jax.random.PRNGKey(config.seed)))
        pool.shutdown(wait=False)  # the thread ends with its one task
    compiled = built.program.compile({**built.bounds, built.dims[0].bound: count}, **options)
    if first is not None and compiled.sharding is None:
        return Train(compiled, config.seed, start, count, first)
    made = None  # the state where the program reads it: split like the envs on a mesh
    if compiled.sharding is not None:
        inputs = compiled.program.inputs
        shape = state_shape(config, env, net)
        leaves = [
            compiled.sharding.spec(inputs[f"{STATE}{k}"].domain)
            for k in range(len(jax.tree_util.tree_leaves(shape)))
        ]
        made = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), leaves)
    start = jax.jit(lambda key: initial_state(config, env, net, key), out_shardings=made)
    return Train(compiled, config.seed, start, count)


def device_mesh(config: RLConfig) -> Mesh | None:
    """The mesh ``config.devices`` asks for: that many devices on one axis ``data`` (``-1``:
    every device, of every process under ``jax.distributed``); None for one device."""
    available = jax.devices()
    count = len(available) if config.devices == -1 else config.devices
    if count > len(available):
        raise ValueError(
            f"devices: {count} asked, {len(available)} available (on CPU, start Python with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={count} for virtual devices)"
        )
    if count == 1:
        return None
    if config.envs % count:
        raise ValueError(f"devices: {count} does not divide envs = {config.envs}")
    return Mesh(np.array(available[:count]), ("data",))
