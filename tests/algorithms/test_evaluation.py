"""The deterministic-policy evaluation against a step-by-step loop over the episodes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.algorithms import envs
from tempo_jax.algorithms.config import RLConfig
from tempo_jax.algorithms.evaluation import evaluate, greedy
from tempo_jax.algorithms.networks import actor_critic


def _loop(config: RLConfig, params, key, episodes: int, max_steps: int) -> list[float]:
    """Each episode alone, one step at a time, with the keys :func:`evaluate` gives it."""
    env = envs.make(config.env)
    net = actor_critic(config, env)
    act = jax.jit(functools.partial(greedy, net, env))
    step = jax.jit(env.step)
    reset_key, step_key = jax.random.split(key)
    out = []
    for e in range(episodes):
        obs, state = env.reset(jax.random.split(reset_key, episodes)[e])
        total = 0.0
        for t in range(max_steps):
            k = jax.random.split(jax.random.fold_in(step_key, t), episodes)[e]
            obs, state, reward, done = step(k, state, act(params, obs))
            total += float(reward)
            if bool(done):
                break
        out.append(total)
    return out


@pytest.mark.parametrize(("env", "max_steps"), [("CartPole-v1", 500), ("Pendulum-v1", 40)])
def test_evaluation_returns_are_a_step_by_step_loops(env: str, max_steps: int) -> None:
    """Random parameters (CartPole's episodes end at different steps; Pendulum's run to
    ``max_steps``): the returns of the vmapped while loop equal the loop's."""
    config = RLConfig(env=env, width=16, layers=1)
    e = envs.make(env)
    params = actor_critic(config, e).init(jax.random.PRNGKey(3), e.reset(jax.random.PRNGKey(0))[0])
    key = jax.random.PRNGKey(11)
    got = evaluate(config, params, key, episodes=3, max_steps=max_steps)
    want = _loop(config, params, key, 3, max_steps)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(got, evaluate(config, params, key, 3, max_steps))  # determinism
    if env == "CartPole-v1":
        assert len(set(got.tolist())) > 1  # the episodes differ


def test_the_greedy_action_is_the_likeliest_or_the_clipped_mean() -> None:
    config = RLConfig(env="CartPole-v1", width=8, layers=1)
    env = envs.make("CartPole-v1")
    net = actor_critic(config, env)
    obs = jnp.ones(env.obs_shape)
    params = net.init(jax.random.PRNGKey(0), obs)
    assert int(greedy(net, env, params, obs)) == int(jnp.argmax(net.apply(params, obs)[0]))
    pendulum = envs.make("Pendulum-v1")
    cont = actor_critic(config, pendulum)
    p = cont.init(jax.random.PRNGKey(0), jnp.ones(pendulum.obs_shape))
    p = jax.tree_util.tree_map(lambda x: x * 1000.0, p)  # a mean far past the bounds
    action = greedy(cont, pendulum, p, jnp.ones(pendulum.obs_shape))
    assert pendulum.action_low <= float(action[0]) <= pendulum.action_high
