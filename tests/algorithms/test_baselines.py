"""The hand-written JAX PPO baselines: GAE against a NumPy loop, the single-jit and the
actor-learner runs against each other, a continuous env, and the single-jit structure."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.extend.core as jex
import numpy as np
import pytest

from tempo_jax.algorithms import envs, policy
from tempo_jax.algorithms.baselines import actor_learner, ppo_jax
from tempo_jax.algorithms.config import RLConfig
from tempo_jax.algorithms.networks import actor_critic
from tests.algorithms.runs import assert_same_run

CARTPOLE = RLConfig(env="CartPole-v1", iterations=3, envs=4, steps=16)


def _gae_loop(rewards, values, dones, last_value, gamma, lam):
    steps = rewards.shape[0]
    adv = np.zeros_like(rewards)
    following = np.zeros_like(last_value)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * alive * next_value - values[t]
        following = delta + gamma * lam * alive * following
        adv[t] = following
    return adv, adv + values


def test_gae_matches_a_numpy_loop() -> None:
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(2, 7, 3)).astype(np.float32)
    dones = np.zeros((7, 3), bool)
    dones[2, 0] = dones[4, 1] = dones[5, 1] = dones[6, 2] = True
    last_value = rng.normal(size=3).astype(np.float32)
    adv, ret = ppo_jax.gae(rewards, values, dones, last_value, 0.99, 0.95)
    want_adv, want_ret = _gae_loop(
        rewards, values, dones.astype(np.float32), last_value, 0.99, 0.95
    )
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-6)


def test_ppo_loss_at_the_acting_policy() -> None:
    """With the acting log-probs, ratio = 1: the policy loss is minus the mean normalised
    advantage (0) and the gradient of the policy term is that of ``-mean(norm * log_prob)``."""
    env = envs.make("CartPole-v1")
    net = actor_critic(CARTPOLE, env)
    params = net.init(jax.random.PRNGKey(0), env.reset(jax.random.PRNGKey(0))[0])
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 3, *env.obs_shape))
    actions = jax.random.randint(jax.random.PRNGKey(2), (5, 3), 0, env.actions)
    adv = jax.random.normal(jax.random.PRNGKey(3), (5, 3))
    evaluate = functools.partial(policy.evaluate, net)
    for _ in range(2):
        evaluate = jax.vmap(evaluate, in_axes=(None, 0, 0))
    evaluate = jax.jit(evaluate)
    log_prob, value, entropy = evaluate(params, obs, actions)
    batch = {"obs": obs, "actions": actions, "log_probs": log_prob, "advantages": adv}
    batch["returns"] = value + 1.0
    config = dataclasses.replace(CARTPOLE, value_coef=0.0, entropy_coef=0.0)
    loss_fn = jax.jit(lambda p: ppo_jax.ppo_loss(p, net, batch, config))
    loss, aux = loss_fn(params)
    np.testing.assert_allclose(float(aux["value_loss"]), 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(aux["entropy"]), float(entropy.mean()), rtol=1e-5)
    assert abs(float(loss)) < 1e-5
    norm = (adv - adv.mean()) / (adv.std() + 1e-8)

    def surrogate(p):
        return -(norm * evaluate(p, obs, actions)[0]).mean()

    got = jax.jit(jax.grad(lambda p: loss_fn(p)[0]))(params)
    want = jax.jit(jax.grad(surrogate))(params)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-7)


def test_single_jit_and_actor_learner_agree() -> None:
    fused = ppo_jax.make_train(CARTPOLE)()
    looped = actor_learner.make_train(CARTPOLE)()
    for name in ("mean_return", "episodes"):
        assert fused[name].shape == (CARTPOLE.iterations,)
        np.testing.assert_array_equal(np.asarray(fused[name]), np.asarray(looped[name]))
    assert float(fused["episodes"].sum()) > 0
    np.testing.assert_allclose(np.asarray(fused["loss"]), np.asarray(looped["loss"]), rtol=1e-4)
    leaves = zip(
        jax.tree_util.tree_leaves(fused["params"]),
        jax.tree_util.tree_leaves(looped["params"]),
        strict=True,
    )
    for a, b in leaves:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("train", [ppo_jax.make_train, actor_learner.make_train])
def test_pendulum_with_epochs_and_minibatches_is_finite(train) -> None:
    config = RLConfig(env="Pendulum-v1", iterations=2, envs=4, steps=16, epochs=2, minibatches=2)
    out = train(config)()
    assert out["loss"].shape == (2,) and out["mean_return"].shape == (2,)
    assert np.isfinite(np.asarray(out["loss"])).all()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(out["params"]))


def test_minibatches_must_divide_the_batch() -> None:
    config = dataclasses.replace(CARTPOLE, iterations=1, minibatches=3)
    with pytest.raises(ValueError, match="not divisible by minibatches = 3"):
        jax.eval_shape(ppo_jax.make_train(config))


def _scans(jaxpr: jex.Jaxpr, depth: int = 0) -> list[tuple[int, int]]:
    """(nesting depth, length) of every scan in a jaxpr and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        is_scan = eqn.primitive.name == "scan"
        if is_scan:
            found.append((depth, eqn.params["length"]))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jex.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jex.Jaxpr):
                    found += _scans(sub, depth + is_scan)
    return found


def test_single_jit_is_one_scan_over_iterations() -> None:
    jaxpr = jax.make_jaxpr(ppo_jax.make_train(CARTPOLE))().jaxpr
    scans = _scans(jaxpr)
    assert [length for depth, length in scans if depth == 0] == [CARTPOLE.iterations]
    inner = [length for depth, length in scans if depth == 1]
    assert inner.count(CARTPOLE.steps) == 2  # the rollout and GAE's reverse scan


@pytest.mark.parametrize(
    ("env", "epochs", "minibatches", "cleanrl"),
    [
        pytest.param("CartPole-v1", 1, 1, False, marks=pytest.mark.slow),  # in 2, 2, True
        ("Pendulum-v1", 1, 1, False),
        pytest.param("CartPole-v1", 2, 2, False, marks=pytest.mark.slow),  # as True, plainer
        pytest.param("CartPole-v1", 1, 1, True, marks=pytest.mark.slow),
        ("CartPole-v1", 2, 2, True),
        pytest.param("Breakout-MinAtar", 1, 1, False, marks=pytest.mark.slow),  # the CNN
    ],
)
def test_tempo_jax_ppo_matches_the_single_jit_baseline(
    env: str, epochs: int, minibatches: int, cleanrl: bool
) -> None:
    """Same keys, same semantics: the tempo_jax program's run (rollout, GAE, loss, gradients,
    Adam) is the hand-written baseline's, over 3 iterations; with several epochs and
    minibatches, the same shuffled minibatches and one Adam state through every update; with
    CleanRL's annealed learning rate and clipped value loss too (each checked against its
    formula below)."""
    from tempo_jax.algorithms import ppo

    config = dataclasses.replace(
        CARTPOLE,
        env=env,
        epochs=epochs,
        minibatches=minibatches,
        cnn="MinAtar" in env,
        anneal_lr=cleanrl,
        clip_value_loss=cleanrl,
    )
    want = ppo_jax.make_train(config)()
    assert_same_run(ppo.make_train(config)(), want)


def test_annealed_learning_rate_is_cleanrls() -> None:
    """Iteration ``k`` of ``I`` steps with ``lr * (1 - k / I)`` for all its ``epochs x
    minibatches`` updates (Adam on a constant gradient moves each step by the rate)."""
    config = dataclasses.replace(CARTPOLE, iterations=4, epochs=2, minibatches=2, anneal_lr=True)
    tx = config.optimiser()
    params = jax.numpy.zeros(())
    state = tx.init(params)
    moves = []
    for _ in range(16):
        updates, state = tx.update(jax.numpy.full((), 1.0), state, params)
        moves.append(-float(updates))
    want = [config.lr * (1 - (n // 4) / 4) for n in range(16)]
    np.testing.assert_allclose(moves, want, rtol=1e-4)


def test_clipped_value_loss_is_cleanrls() -> None:
    """``max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2) / 2`` on one batch."""
    env = envs.make("CartPole-v1")
    net = actor_critic(CARTPOLE, env)
    params = net.init(jax.random.PRNGKey(0), env.reset(jax.random.PRNGKey(0))[0])
    obs = jax.random.normal(jax.random.PRNGKey(1), (6, *env.obs_shape))
    actions = jax.random.randint(jax.random.PRNGKey(2), (6,), 0, env.actions)
    value = jax.vmap(functools.partial(policy.value, net, params))(obs)
    old = value + jax.numpy.array([-0.5, 0.5, -0.1, 0.1, 0.0, 0.3])
    batch = {
        "obs": obs,
        "actions": actions,
        "log_probs": jax.numpy.zeros(6),
        "values": old,
        "advantages": jax.numpy.ones(6),
        "returns": value + 0.4,
    }
    config = dataclasses.replace(CARTPOLE, clip_value_loss=True, clip=0.2)
    _, aux = ppo_jax.ppo_loss(params, net, batch, config)
    v, o, r = (np.asarray(x, np.float64) for x in (value, old, batch["returns"]))
    near = o + np.clip(v - o, -0.2, 0.2)
    want = 0.5 * np.maximum((v - r) ** 2, (near - r) ** 2)
    np.testing.assert_allclose(float(aux["value_loss"]), want.mean(), rtol=1e-5)
