"""PPO as one tempo_jax program over ``(i, b, t)``: rollout, GAE, loss, backward, optimiser.

With ``epochs = minibatches = 1`` the loss is computed from the rollout's own forward pass:
the log-probabilities and values the policy produced while acting are the ones
differentiated (their old values are the same tensors, detached), so there is no second
forward pass. Otherwise the parameters are a recurrence over ``(i, e, m)`` (iteration,
epoch, minibatch), stepped by one optimiser carried through all of them; minibatch ``m`` of
epoch ``e`` gathers its rows of iteration ``i``'s rollout through a permutation drawn per
``(i, e)`` and evaluates the policy on them again. Advantages come from GAE, a backward
recurrence over ``t``: ``adv[t] = delta[t] + gamma * lambda * (1 - done[t]) * adv[t+1]``.

Example::

    train = make_train(config)      # compiles the whole training run
    out = train()                   # {"params", "mean_return", "loss", ...}, one XLA call
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import tempo_jax as tj

from . import envs, policy, training
from .config import RLConfig
from .networks import actor_critic
from .rollout import Rollout, read, rollout


@dataclasses.dataclass
class Program:
    """The recorded program and the handles a caller may read or log."""

    program: tj.Program
    dims: tuple[tj.Symbol, tj.Symbol, tj.Symbol]
    bounds: dict[tj.Symbol, int]


def gae(
    roll: Rollout, value: tj.RT, last_value: tj.RT, config: RLConfig, dims: tuple
) -> tuple[tj.RT, tj.RT]:
    """Advantages and returns by GAE (``value`` and ``last_value`` already detached)."""
    i, b, t = dims
    T = t.bound
    next_value = tj.placeholder((), jnp.float32, domain=(i, b, t), name="next_value")
    next_value[i, b, T - 1] = last_value[i, b]
    next_value[True] = value[i, b, t + 1]
    alive = 1.0 - roll.done.astype(jnp.float32)
    delta = roll.reward + config.gamma * alive * next_value - value
    adv = tj.placeholder((), jnp.float32, domain=(i, b, t), name="adv")
    adv[i, b, T - 1] = delta[i, b, T - 1]
    adv[True] = delta + config.gamma * config.gae_lambda * alive * adv[i, b, t + 1]
    return adv, adv + value


def ppo_loss(
    log_prob: tj.RT,
    value: tj.RT,
    entropy: tj.RT,
    old: tuple[tj.RT, tj.RT],
    adv: tj.RT,
    ret: tj.RT,
    config: RLConfig,
    rows: Callable[[tj.RT], tj.RT],
) -> tuple[tj.RT, dict[str, tj.RT]]:
    """The clipped PPO objective, averaged over a batch, and its :data:`METRICS` (each also
    averaged over the batch: the approximate KL divergence from the acting policy is
    ``(ratio - 1) - log(ratio)``, the clip fraction that of the ratios outside
    ``1 +- clip``, as CleanRL computes them); ``old`` is the acting policy's
    ``(log_prob, value)``; ``rows(x)`` is ``x``'s whole batch as one tensor (a range read over
    ``(b, t)``, or a minibatch already gathered into an array). Advantages are normalised over
    that batch. With ``clip_value_loss``, the value loss is CleanRL's: the larger of the
    squared errors of the value and of the value clipped to ``old value +- clip``."""
    old_log_prob, old_value = old
    batch = rows(adv)
    norm = (adv - batch.mean()) / (batch.std() + 1e-8)
    ratio = tj.exp(log_prob - old_log_prob)
    clipped = tj.clip(ratio, 1.0 - config.clip, 1.0 + config.clip)
    policy_loss = tj.maximum(-norm * ratio, -norm * clipped)
    value_loss = 0.5 * (value - ret) ** 2
    if config.clip_value_loss:
        near = old_value + tj.clip(value - old_value, -config.clip, config.clip)
        value_loss = tj.maximum(value_loss, 0.5 * (near - ret) ** 2)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    log_ratio = log_prob - old_log_prob
    parts = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": (ratio - 1.0) - log_ratio,
        "clip_fraction": (tj.abs(ratio - 1.0) > config.clip).astype(jnp.float32),
    }
    return rows(loss).mean(), {name: rows(x.detach()).mean() for name, x in parts.items()}


# what the algorithms report besides the loss (REINFORCE and A2C: the first three)
METRICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


def build(config: RLConfig, log: Callable[[int, dict[str, float]], None] | None = None) -> Program:
    """Record PPO for ``config`` (module docstring)."""
    reuse = config.epochs == 1 and config.minibatches == 1
    size = config.envs * config.steps
    if config.epochs < 1 or config.minibatches < 1 or size % config.minibatches:
        raise ValueError(
            f"PPO needs epochs >= 1 and minibatches >= 1 dividing envs * steps = {size}; got "
            f"epochs = {config.epochs}, minibatches = {config.minibatches}"
        )
    env = envs.make(config.env, **config.env_options)
    net = actor_critic(config, env)
    example = training.state_shape(config, env, net)
    with tj.Program("ppo") as p:
        i, b, t, e, m = p.dims("i b t e m")
        dims = (i, b, t)
        B, T = b.bound, t.bound
        _, run_key = training.split(training.key_input())
        start = training.state_input(example, b)
        steps = (i,) if reuse else (i, e, m)  # the optimiser steps over these, nested
        params = tj.param(start.params, domain=steps, over=steps)
        acting_params = params if reuse else read(params, (i, 0, 0))
        acting = tj.lift(functools.partial(policy.act, net), name="policy")
        roll = rollout(
            env, lambda k, obs: _split(acting(acting_params, k, obs)), dims, run_key, start
        )
        log_prob, value, entropy = roll.acted
        critic = tj.lift(functools.partial(policy.value, net), name="value")
        last_value = critic(acting_params, roll.next_obs[i, b, T - 1]).detach()
        adv, ret = gae(roll, value.detach(), last_value, config, dims)
        if reuse:  # differentiate the rollout's own forward pass
            total, parts = ppo_loss(
                log_prob, value, entropy, (log_prob.detach(), value.detach()), adv, ret, config,
                rows=lambda x: x[i, 0:B, 0:T],
            )  # fmt: skip
            loss, metrics = total, parts
        else:
            batch = _minibatch(
                (roll.obs, roll.action, log_prob.detach(), value.detach(), adv, ret),
                training.key_at(training.fold_in(run_key, 3), (i, e), start.iteration),
                m,
                config,
                dims,
            )
            evaluate = tj.lift(
                jax.vmap(functools.partial(policy.evaluate, net), in_axes=(None, 0, 0)),
                name="evaluate",
            )
            mb_obs, mb_action, mb_old, mb_old_value, mb_adv, mb_ret = batch
            mb_log_prob, mb_value, mb_entropy = evaluate(params, mb_obs, mb_action)
            total, parts = ppo_loss(
                mb_log_prob, mb_value, mb_entropy, (mb_old, mb_old_value), mb_adv, mb_ret, config,
                rows=lambda x: x,
            )  # fmt: skip
            loss = total[i, 0 : e.bound, 0 : m.bound].mean()
            metrics = {k: x[i, 0 : e.bound, 0 : m.bound].mean() for k, x in parts.items()}
        grads = tj.grad(total, params)
        new, opt_state = tj.optim.step(
            config.optimiser(), params, grads, over=steps, state=start.opt_state, with_state=True
        )
        last = (i.bound - 1,) if reuse else (i.bound - 1, e.bound - 1, m.bound - 1)
        p.output("params", read(new, last))
        training.output_state(p, read(new, last), read(opt_state, last), roll.end, start, dims)
        output_metrics(p, roll, {"loss": loss, **metrics}, dims, log)
    bounds = {
        i.bound: config.iterations,
        B: config.envs,
        T: config.steps,
        e.bound: config.epochs,
        m.bound: config.minibatches,
    }
    return Program(p, dims, bounds)


def _minibatch(
    tensors: tuple[tj.RT, ...], key: tj.RT, m: tj.Symbol, config: RLConfig, dims: tuple
) -> tuple[tj.RT, ...]:
    """Minibatch ``m`` of each tensor over ``(i, b, t)``: its ``B * T`` rows of iteration ``i``,
    flattened time-major, permuted by ``key`` (one permutation per epoch) and cut into
    ``minibatches`` parts (the single-jit baseline's order)."""
    i, b, t = dims
    size = config.envs * config.steps
    order = tj.lift(lambda k: jax.random.permutation(k, size), name="shuffle")(key)

    rows = size // config.minibatches

    def pick(x: jax.Array, order: jax.Array, part: jax.Array) -> jax.Array:
        flat = jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])  # row t * B + b
        return flat[jax.lax.dynamic_slice(order, (part * rows,), (rows,))]

    gather = tj.lift(pick, name="minibatch")
    return tuple(gather(x[i, 0 : b.bound, 0 : t.bound], order, m) for x in tensors)


def output_metrics(
    p: tj.Program,
    roll: Rollout,
    losses: dict[str, tj.RT],
    dims: tuple,
    log: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """The outputs ``mean_return`` and ``episodes`` (of the episodes that ended in each
    iteration) and each of ``losses`` (``loss`` and the algorithm's metrics: tensors over
    ``i``), over the iterations; with ``log``, a sink calling ``log(i, {name: value})`` with
    all of them and ``"run"`` (the program's ``run`` input) once per iteration."""
    i, b, t = dims
    ended = roll.done.astype(jnp.float32)[i, 0 : b.bound, 0 : t.bound].sum()
    finished = tj.where(roll.done, roll.episode_return, 0.0)[i, 0 : b.bound, 0 : t.bound]
    mean_return = finished.sum() / tj.maximum(ended, 1.0)
    values = {"mean_return": mean_return, "episodes": ended, **losses}
    for name, x in values.items():
        p.output(name, x[0 : i.bound])
    run = training.run_input()  # an input of every run, used by the sink only
    if log is None:
        return
    values["run"] = run.astype(jnp.float32)
    names = tuple(values)

    def send(stacked: Any, at: dict[str, int]) -> None:
        log(at["i"], {name: float(v) for name, v in zip(names, stacked, strict=True)})

    tj.sink(tj.stack(list(values.values())), send)


def _split(out: Any) -> tuple[tj.RT, tuple[tj.RT, tj.RT, tj.RT]]:
    action, log_prob, value, entropy = out
    return action, (log_prob, value, entropy)


def make_train(
    config: RLConfig,
    log: Callable[[int, dict[str, float]], None] | None = None,
    iterations: int | None = None,
) -> training.Train:
    """The whole training run, compiled: a pure function of a PRNG key (default: the config's
    seed's) and of the state to continue from, returning its outputs
    (:mod:`algorithms.training`). With ``iterations``, one call runs that many iterations of
    the run (a chunk: call it again on the state it returns)."""
    return compile_run(build(config, log), config, iterations)


def compile_run(
    built: Program, config: RLConfig, iterations: int | None = None, **options: Any
) -> training.Train:
    """A recorded run of :func:`build` (or REINFORCE's, A2C's) compiled as a
    :class:`~algorithms.training.Train` running ``iterations`` (default: all) per call;
    ``options`` go to ``Program.compile``."""
    env = envs.make(config.env, **config.env_options)
    net = actor_critic(config, env)
    return training.compile_run(built, config, env, net, iterations, **options)
