"""REINFORCE and A2C: the returns against NumPy loops, the tempo_jax programs against their
single-jit twins (:mod:`algorithms.baselines.pg_jax`), the program's own returns against the
loops on its own rollout, and its first gradient against ``jax.grad`` of the twin's loss."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tempo_jax as tj
from tempo_jax.algorithms import a2c, config, envs, policy, ppo, reinforce
from tempo_jax.algorithms.baselines import pg_jax, ppo_jax
from tempo_jax.algorithms.config import RLConfig
from tempo_jax.algorithms.networks import actor_critic
from tempo_jax.algorithms.rollout import Rollout
from tests.algorithms.runs import assert_same_run

CARTPOLE = RLConfig(env="CartPole-v1", iterations=3, envs=4, steps=16)
GAMMA = 0.9
CONFIGS = pathlib.Path(__file__).parents[2] / "configs" / "rl"


# -- the returns against NumPy loops -------------------------------------------------------------


def _mc_loop(rewards, dones, last_value, gamma):
    ret = np.zeros_like(rewards)
    following = last_value.copy()
    for t in reversed(range(rewards.shape[0])):
        following = rewards[t] + gamma * (1.0 - dones[t]) * following
        ret[t] = following
    return ret


def _n_step_loop(rewards, dones, values, last_value, gamma, n):
    steps, count = rewards.shape
    ret = np.zeros_like(rewards)
    for b in range(count):
        for t in range(steps):
            total, discount = 0.0, 1.0
            for k in range(n):
                s = t + k
                total += discount * rewards[s, b]
                if dones[s, b]:
                    break  # the episode ended: no later reward, no bootstrap
                discount *= gamma
                if k == n - 1 or s == steps - 1:  # the window ends: bootstrap
                    total += discount * (values[s + 1, b] if s + 1 < steps else last_value[b])
                    break
            ret[t, b] = total
    return ret


def _episodes(steps: int = 7, count: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(rewards, dones, values, last_value)``: time-major, dones mid-rollout and at its end."""
    rng = np.random.default_rng(seed)
    rewards, values = rng.normal(size=(2, steps, count)).astype(np.float32)
    dones = np.zeros((steps, count), np.float32)
    dones[2, 0] = dones[4, 1] = dones[5, 1] = dones[steps - 1, 2] = 1.0
    return rewards, dones, values, rng.normal(size=count).astype(np.float32)


def _assert_close(got: Any, want: Any) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_mc_returns_match_a_numpy_loop() -> None:
    rewards, dones, _, last_value = _episodes()
    got = pg_jax.mc_returns(rewards, dones.astype(bool), last_value, GAMMA)
    _assert_close(got, _mc_loop(rewards, dones, last_value, GAMMA))


@pytest.mark.parametrize("n", [1, 3, 9])  # 9 = T + 2: the window always reaches the end
def test_n_step_returns_match_a_numpy_loop(n: int) -> None:
    rewards, dones, values, last_value = _episodes()
    got = pg_jax.n_step_returns(rewards, dones.astype(bool), values, last_value, GAMMA, n)
    _assert_close(got, _n_step_loop(rewards, dones, values, last_value, GAMMA, n))


def test_n_step_returns_with_a_window_past_the_end_are_mc_returns() -> None:
    rewards, dones, values, last_value = _episodes()
    got = pg_jax.n_step_returns(rewards, dones, values, last_value, GAMMA, 9)
    _assert_close(got, pg_jax.mc_returns(rewards, dones, last_value, GAMMA))


def _returns_program(n_step: int) -> tj.Program:
    """``reinforce.returns`` on inputs over ``(i, b, t)`` standing in for a rollout."""
    with tj.Program() as p:
        dims = p.dims("i b t")
        i, b, t = dims
        reward = tj.input("reward", (), jnp.float32, domain=dims)
        done = tj.input("done", (), jnp.bool_, domain=dims)
        value = tj.input("value", (), jnp.float32, domain=dims)
        last_value = tj.input("last_value", (), jnp.float32, domain=(i, b))
        roll = Rollout(None, None, None, reward, done, None, None, None)
        cfg = RLConfig(algo="reinforce", gamma=GAMMA, n_step=n_step)
        ret = reinforce.returns(roll, value, last_value, cfg, dims)
        p.output("ret", ret[0, 0 : b.bound, 0 : t.bound])
    return p


@pytest.mark.parametrize("n_step", [0, 1, 3, 9])
def test_tempo_jax_returns_match_the_loops_compiled_and_in_the_reference(n_step: int) -> None:
    """The window read ``r[i, b, t : min(t + n, T)]`` (and the MC recurrence), compiled and
    point by point, on ``(B, T)`` arrays (the loops' transpose)."""
    rewards, dones, values, last_value = _episodes()
    if n_step == 0:
        want = _mc_loop(rewards, dones, last_value, GAMMA)
    else:
        want = _n_step_loop(rewards, dones, values, last_value, GAMMA, n_step)
    inputs = {
        "reward": rewards.T[None],
        "done": dones.T[None].astype(bool),
        "value": values.T[None],
        "last_value": last_value[None],
    }
    bounds = {"I": 1, "B": rewards.shape[1], "T": rewards.shape[0]}
    program = _returns_program(n_step)
    _assert_close(program.compile(bounds)(**inputs)["ret"], want.T)
    _assert_close(tj.reference.run(program, bounds=bounds, inputs=inputs)["ret"], want.T)


# -- the programs against their single-jit twins -------------------------------------------------


TWINS = [
    pytest.param("reinforce", 3, "CartPole-v1", id="reinforce-n3-CartPole"),
    pytest.param("a2c", 0, "CartPole-v1", id="a2c-CartPole"),
    pytest.param("reinforce", 0, "CartPole-v1", id="reinforce-mc-CartPole", marks=pytest.mark.slow),
    pytest.param("a2c", 0, "Pendulum-v1", id="a2c-Pendulum", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("algo", "n_step", "env"), TWINS)
def test_tempo_jax_program_matches_the_single_jit_twin(algo: str, n_step: int, env: str) -> None:
    """Same keys, same semantics: rollout, returns, loss, gradients and Adam over 3
    iterations; the sink logs each iteration's metrics."""
    cfg = dataclasses.replace(CARTPOLE, algo=algo, n_step=n_step, env=env)
    module = {"reinforce": reinforce, "a2c": a2c}[algo]
    logged: dict[int, dict[str, float]] = {}
    got = module.make_train(cfg, lambda i, metrics: logged.update({i: metrics}))()
    want = pg_jax.make_train(cfg)()
    assert float(np.asarray(want["episodes"]).sum()) > 0 or env == "Pendulum-v1"
    assert_same_run(got, want)
    jax.effects_barrier()
    assert sorted(logged) == list(range(cfg.iterations))
    for name in ("mean_return", "loss"):
        np.testing.assert_allclose([logged[i][name] for i in range(3)], got[name], rtol=1e-6)


# -- one SGD step of REINFORCE (n = 3): its returns and its gradient -----------------------------


@dataclasses.dataclass(frozen=True)
class SGDConfig(RLConfig):
    """Plain SGD with step 1: the parameters after one step are ``params - grad``."""

    def optimiser(self) -> optax.GradientTransformation:
        return optax.sgd(1.0)


SGD_NSTEP = SGDConfig(algo="reinforce", env="CartPole-v1", iterations=1, envs=4, steps=16, n_step=3)


def _recording(cfg: RLConfig) -> reinforce.Objective:
    """REINFORCE's objective, also naming the first iteration's returns (n-step and MC), rewards,
    dones and values as outputs of the program."""

    def loss(roll: Rollout, last_value: tj.RT, dims: reinforce.Dims) -> tuple:
        _, b, t = dims
        p = roll.reward.program
        value = roll.acted[1].detach()
        mc = dataclasses.replace(cfg, n_step=0)
        seen = {
            "n_step_return": reinforce.returns(roll, value, last_value, cfg, dims),
            "mc_return": reinforce.returns(roll, value, last_value, mc, dims),
            "reward": roll.reward,
            "done": roll.done,
            "value": value,
        }
        for name, x in seen.items():
            p.output(name, x[0, 0 : b.bound, 0 : t.bound])
        p.output("last_value", last_value[0, 0 : b.bound])
        return reinforce.objective(cfg)(roll, last_value, dims)

    return loss


@functools.cache
def _sgd_run() -> dict[str, Any]:
    """One iteration of the recording REINFORCE program with SGD (shared by two tests)."""
    built = reinforce.build_actor_critic("reinforce", SGD_NSTEP, _recording(SGD_NSTEP))
    return ppo.compile_run(built, SGD_NSTEP)()


@functools.cache
def _twin_first_iteration() -> tuple[Any, Any, Any]:
    """The twin's ``(initial params, first rollout, jax.grad of its loss on that rollout)``."""
    cfg = SGD_NSTEP
    env = envs.make(cfg.env)
    net = actor_critic(cfg, env)
    ks = ppo_jax.keys(cfg)
    rollout = pg_jax.make_rollout(cfg, env, net, ks)
    value = jax.vmap(functools.partial(policy.value, net), in_axes=(None, 0))

    @jax.jit
    def first() -> tuple[Any, Any, Any]:
        params, obs, state, running = ppo_jax.init(cfg, env, net, ks)
        (last_obs, _, _), traj = rollout(params, (obs, state, running), jnp.asarray(0))
        adv, ret = pg_jax.targets(cfg, traj, value(params, last_obs))
        grad = jax.grad(pg_jax.pg_loss, has_aux=True)(params, net, traj, adv, ret, cfg)[0]
        return params, traj, grad

    return first()


def test_tempo_jax_returns_on_its_own_rollout_match_the_loops() -> None:
    out = _sgd_run()
    rewards, dones, values = (np.asarray(out[k]).T for k in ("reward", "done", "value"))
    last_value = np.asarray(out["last_value"])
    assert dones.any()  # an episode ended inside the rollout
    n_step = _n_step_loop(rewards, dones, values, last_value, SGD_NSTEP.gamma, SGD_NSTEP.n_step)
    _assert_close(np.asarray(out["n_step_return"]).T, n_step)
    _assert_close(
        np.asarray(out["mc_return"]).T, _mc_loop(rewards, dones, last_value, SGD_NSTEP.gamma)
    )
    _, traj, _ = _twin_first_iteration()  # the same rollout as the twin's
    np.testing.assert_array_equal(rewards, np.asarray(traj.reward))
    np.testing.assert_array_equal(dones, np.asarray(traj.done))


def test_tempo_jax_first_gradient_is_jax_grad_of_the_twin_loss() -> None:
    """With SGD at step 1 the program's parameters after one iteration are ``params - grad``:
    ``grad`` is compared with ``jax.grad`` of :func:`pg_jax.pg_loss` on the same rollout (the
    twin recomputes the forward pass; the program differentiates the rollout's own)."""
    params, _, want = _twin_first_iteration()
    got = jax.tree_util.tree_map(lambda a, b: a - b, params, _sgd_run()["params"])
    leaves = zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True)
    for g, w in leaves:
        assert np.abs(np.asarray(w)).max() > 0
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


# -- configs and errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "algo", "n_step"),
    [("reinforce_cartpole", "reinforce", 0), ("reinforce_nstep_cartpole", "reinforce", 8),
     ("a2c_cartpole", "a2c", 0)],
)  # fmt: skip
def test_configs_load(name: str, algo: str, n_step: int) -> None:
    cfg = config.load(CONFIGS / f"{name}.yaml")
    assert (cfg.algo, cfg.n_step) == (algo, n_step)
    assert 450_000 <= cfg.iterations * cfg.envs * cfg.steps <= 600_000
    reinforce.check(cfg, algo)
    pg_jax.check(cfg)


@pytest.mark.parametrize(
    ("build", "changes", "message"),
    [
        (reinforce.build, {"algo": "ppo"}, "config.algo is 'ppo'; this module trains 'reinforce'"),
        (a2c.build, {"algo": "reinforce"}, "this module trains 'a2c'"),
        (reinforce.build, {"algo": "reinforce", "n_step": -1}, "n_step must be 0 .* got -1"),
        (a2c.build, {"algo": "a2c", "n_step": 4}, "n_step is REINFORCE's; a2c uses GAE"),
        (reinforce.build, {"algo": "reinforce", "epochs": 2}, "one full-batch step"),
        (pg_jax.make_train, {"algo": "dqn"}, "config.algo must be one of reinforce, a2c"),
        (pg_jax.make_train, {"algo": "reinforce", "n_step": -2}, "got -2"),
    ],
)
def test_bad_configs_are_refused(build: Any, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(dataclasses.replace(CARTPOLE, **changes))


def test_n_step_returns_need_a_positive_n() -> None:
    rewards, dones, values, last_value = _episodes()
    with pytest.raises(ValueError, match="n must be positive, got 0"):
        pg_jax.n_step_returns(rewards, dones, values, last_value, GAMMA, 0)


# -- a tempo_jax bug found on the way ------------------------------------------------------------


def test_window_read_of_a_value_computed_in_a_loop_inside_the_window_loop() -> None:
    """A value written in a loop over ``b`` inside the reversed loop over ``t`` and read
    through the window ``[b, t:min(t + 3, T)]`` keeps its ``b`` axis: each iteration of ``t``
    runs the ``b`` loop again, so a buffer without it would hold only the last ``b``'s rows."""
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (), jnp.float32, domain=(b, t))
        v = tj.input("v", (), jnp.float32, domain=(b, t))
        end = tj.min(t + 3, t.bound)
        out = (x * 2.0)[b, t:end].sum() * v[b, end - 1]  # `* v[...]` is vectorised over b
        p.output("o", out[0 : b.bound, 0 : t.bound])
    rng = np.random.default_rng(0)
    inputs = {k: rng.normal(size=(3, 7)).astype(np.float32) for k in ("x", "v")}
    want = [
        [2 * inputs["x"][j, s : min(s + 3, 7)].sum() * inputs["v"][j, min(s + 3, 7) - 1]
         for s in range(7)]
        for j in range(3)
    ]  # fmt: skip
    _assert_close(tj.reference.run(p, bounds={"B": 3, "T": 7}, inputs=inputs)["o"], want)
    _assert_close(p.compile({"B": 3, "T": 7})(**inputs)["o"], want)


# -- memory: n-step returns stream, Monte-Carlo returns keep the episode ---------------------------


def _stored_bytes(n_step: int, steps: int, budget: int | None = None, **options: Any) -> int:
    """The planned device bytes of REINFORCE (``budget``: its planned device peak under it;
    ``options``: the config's fields)."""
    fields = {"obs_shape": (3, 8, 8), "envs": 4, **options}
    cfg = RLConfig(
        algo="reinforce",
        env="trivial",
        env_options={"obs_shape": fields.pop("obs_shape"), "episode": steps},
        iterations=2,
        steps=steps,
        n_step=n_step,
        **fields,
    )
    compiled = ppo.compile_run(reinforce.build(cfg), cfg, memory_budget=budget)
    report = compiled.memory()
    return report.device_bytes if budget is None else report.peak_device_bytes


def test_n_step_reinforce_stores_nothing_that_grows_with_the_episode() -> None:
    streamed = [_stored_bytes(4, steps) for steps in (16, 64)]
    whole = [_stored_bytes(0, steps) for steps in (16, 64)]
    assert streamed[1] <= 1.05 * streamed[0]  # the learner runs inside the acting loop
    # Monte-Carlo returns need the episode first: the rollout is stored whole
    assert streamed[1] - streamed[0] < 0.1 * (whole[1] - whole[0])


@pytest.mark.filterwarnings("ignore::tempo_jax.MemoryBudgetWarning")
def test_monte_carlo_reinforce_under_a_budget_keeps_the_episode_in_host_memory() -> None:
    """Under a budget the learner streams behind the returns and the episode's observations
    are kept in host memory: the planned device peak grows by per-step scalars only."""
    wide = {"obs_shape": (3, 16, 16), "envs": 8, "width": 8, "layers": 1, "cnn": True}
    peaks = [_stored_bytes(0, steps, budget=0, **wide) for steps in (16, 64)]
    whole = [_stored_bytes(0, steps, **wide) for steps in (16, 64)]
    assert peaks[1] - peaks[0] < 0.1 * (whole[1] - whole[0])
