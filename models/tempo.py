"""The tempo_jax decoder: the program of :mod:`models.decode_program`, compiled per shape of
work, and its Hugging Face-style front end.

The prompt is fed as one block of positions (parallel prefill: every prompt position at
once, attention in block-causal query blocks), then one new position per step in the same
program, the layers inside the step loop and the KV cache read in static tiles.

Example::

    decoder = TempoDecoder(cfg, batch=4, prompt_len=8, steps=32)
    out = decoder.generate(params, prompt, key=jax.random.PRNGKey(0), temperature=0.8)

``out`` is the dict every decoder of :mod:`models.baselines` returns (``tokens``, ``length``,
``logits``, ``steps_run``), with the same sampling keys, so they can be compared token by token.
:meth:`TempoModel.generate_hf` is the Hugging Face-style entry point (ragged prompts, masks,
top-k, several end tokens, logits only on request)::

    out = TempoModel(cfg, params).generate_hf([[5, 9, 2], [7]], max_new_tokens=16)
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import tempo_jax as tj

from . import prompts
from .baselines.decode_loop import Sampling, prepare
from .config import DecoderConfig
from .decode_program import attend_tiles, bounds, build_program
from .params import Params
from .sharding import decode_specs, gathered

__all__ = ["Generation", "TempoDecoder", "TempoModel", "attend_tiles", "build_program"]

UNROLL_LAYERS = 32  # up to this many layers, the layer loop is unrolled (static weight slices)


@functools.lru_cache(maxsize=16)
def _compiled(
    cfg: DecoderConfig,
    batch: int,
    prompt_len: int,
    steps: int,
    block: int,
    dtype: str,
    mesh: Mesh | None = None,
    **options: Any,
) -> tj.Compiled:
    program = build_program(cfg, batch, prompt_len, steps, dtype=jnp.dtype(dtype), **options)
    tiling = functools.partial(tj.tile_dynamic_ranges, block=block)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    unroll = ("l",) if cfg.layers <= UNROLL_LAYERS else ()
    split = {}
    if mesh is not None:  # rows over the mesh's first axis, heads over its second
        split = {"mesh": mesh, "specs": decode_specs(cfg, mesh, batch, options.get("ragged"))}
    return program.compile(
        bounds(cfg, prompt_len, steps), pipeline=pipeline, unroll=unroll, **split
    )


class TempoDecoder:
    """The tempo_jax decoder for one shape of work: ``batch`` prompts of ``prompt_len`` tokens
    followed by ``steps`` new tokens, attending in tiles of ``block`` cache rows. The options
    are :func:`build_program`'s. With ``mesh`` (a ``jax.sharding.Mesh``, e.g.
    :func:`models.sharding.decode_mesh`) the rows are split over its first axis (data
    parallelism: the batch a multiple of that axis's devices) and, when it has a second, every
    layer's heads and hidden units over that one (tensor parallelism: the KV cache split like
    the heads; :func:`models.sharding.decode_specs`)."""

    def __init__(
        self,
        cfg: DecoderConfig,
        batch: int,
        prompt_len: int,
        steps: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        end_token: int | Sequence[int] | None = None,
        ragged: bool = False,
        logits: bool = True,
        block: int = 64,
        dtype: Any = jnp.float32,
        mesh: Mesh | None = None,
    ) -> None:
        if prompt_len < 1 or steps < 1:
            raise ValueError(f"need prompt_len >= 1 and steps >= 1, got {prompt_len}, {steps}")
        if prompt_len + steps > cfg.max_len:
            raise ValueError(f"P + steps = {prompt_len + steps} exceeds max_len {cfg.max_len}")
        if temperature < 0 or top_p <= 0:
            raise ValueError(f"need temperature >= 0 and top_p > 0, got {temperature}, {top_p}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be None or at least 1, got {top_k}")
        self.cfg, self.batch, self.prompt_len, self.steps = cfg, batch, prompt_len, steps
        self.ends = (end_token,) if isinstance(end_token, int) else tuple(end_token or ())
        self.ragged = ragged
        self.bounds = bounds(cfg, prompt_len, steps)  # what the program runs with
        self.compiled = _compiled(
            cfg,
            batch,
            prompt_len,
            steps,
            block,
            jnp.dtype(dtype).name,
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=top_k,
            end_token=self.ends,
            ragged=ragged,
            logits=logits,
            mesh=mesh,
        )

    def inputs(
        self, params: Params, prompt: Any, key: jax.Array | None = None, mask: Any = None
    ) -> dict:
        """The compiled program's inputs for ``params``, ``prompt``, ``key`` (one key per row
        ``[B]`` when ragged) and, when ragged, the prompt's ``mask`` (default: no padding)."""
        if key is None:
            key = jnp.zeros((self.batch, 2) if self.ragged else (2,), jnp.uint32)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        flat: dict[str, Any] = {"prompt": jnp.asarray(prompt, jnp.int32), "key": key}
        if self.ragged:
            flat["mask"] = jnp.ones(flat["prompt"].shape, bool) if mask is None else mask
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            flat["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
        return flat

    def generate(self, params: Params, prompt: Any, key: jax.Array | None = None) -> dict:
        """Decode; the result of :func:`models.baselines.scan.generate` for the same
        arguments."""
        out = gathered(self.compiled(**self.inputs(params, prompt, key)))
        return self.result(out, jnp.asarray(prompt, jnp.int32))

    def result(self, out: dict, prompt: jax.Array) -> dict[str, jax.Array]:
        """The program's outputs as ``generate``'s dict (``logits`` when the program has
        them)."""
        total, width = self.prompt_len + self.steps, self.prompt_len
        more = self.steps > 1  # the program has decode steps after the first new token
        new = [out["first"][:, None]] + ([jnp.swapaxes(out["tokens"], 0, 1)] if more else [])
        tokens = jnp.concatenate([prompt, *new], axis=1)
        fed = None
        if not self.ends:
            run = jnp.int32(total - 1)
            length = jnp.full((self.batch,), total, jnp.int32)
        else:  # a stopped step loop ran one step more than needed when `first` ended every row
            steps = out["lengths"]["T"] if more else 0
            run = jnp.where(jnp.all(out["first_done"]), width, width + steps).astype(jnp.int32)
            fed = jnp.arange(total - 1) < run
            tokens = tokens.at[:, 1:].set(jnp.where(fed, tokens[:, 1:], self.ends[0]))
            done = [jnp.zeros((self.batch, width - 1), bool), out["first_done"][:, None]]
            done = jnp.concatenate(done + ([jnp.swapaxes(out["done"], 0, 1)] if more else []), 1)
            done &= fed  # [B, P + steps - 1]: done after position i + 1
            length = jnp.where(done.any(axis=1), jnp.argmax(done, axis=1) + 2, total)
        result = {"tokens": tokens, "length": length, "steps_run": run}
        if "prompt_logits" in out:
            parts = [out["prompt_logits"]] + ([out["logits"]] if more else [])
            logits = jnp.swapaxes(jnp.concatenate(parts, axis=0), 0, 1)
            result["logits"] = logits if fed is None else jnp.where(fed[:, None], logits, 0.0)
        return result


@dataclasses.dataclass(frozen=True)
class Generation:
    """What :meth:`TempoModel.generate_hf` returns.

    ``sequences`` int32 ``[B, P + new]``: each prompt, left-padded, then its new tokens (after
    its end token, the first end token). ``lengths`` ``[B]``: real tokens of each row, its
    prompt (``prompt_lengths``) plus its new tokens up to and including its end token.
    ``logits`` float32 ``[B, P + new - 1, V]`` when asked for: at ``t``, the logits of the
    token at ``t + 1`` (zero at padding and at positions not run). ``steps_run``: positions
    fed before every row was done.
    """

    sequences: jax.Array
    lengths: jax.Array
    prompt_lengths: jax.Array
    steps_run: jax.Array
    logits: jax.Array | None = None


class TempoModel:
    """A decoder config and its parameters, decoding with tempo_jax (one compiled program per
    shape of work, cached): ``TempoModel(cfg, params).generate(prompt, steps)``, or
    Hugging Face style with :meth:`generate_hf`."""

    def __init__(self, cfg: DecoderConfig, params: Params) -> None:
        self.cfg = cfg
        self.params = params

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path, dtype: Any = None) -> TempoModel:
        """The model of a local Hugging Face checkpoint folder (Llama or GPT-2; see
        :func:`models.pretrained.load_pretrained`), its weights cast to ``dtype`` if given."""
        from .pretrained import load_pretrained

        return cls(*load_pretrained(path, dtype=dtype))

    def generate(
        self,
        prompt: Any,
        steps: int,
        *,
        key: jax.Array | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        end_token: int | None = None,
        block: int = 64,
        mesh: Mesh | None = None,
    ) -> dict[str, jax.Array]:
        """Decode ``steps`` tokens after ``prompt`` ``[B, P]``; the dict of
        :mod:`models.baselines` (``tokens``, ``length``, ``logits``, ``steps_run``). ``mesh``:
        as :class:`TempoDecoder`'s."""
        sampling = Sampling(temperature, top_p, end_token)
        prompt, key = prepare(self.cfg, prompt, steps, key, sampling)  # the baselines' checks
        decoder = TempoDecoder(
            self.cfg,
            prompt.shape[0],
            prompt.shape[1],
            steps,
            temperature=temperature,
            top_p=top_p,
            end_token=end_token,
            block=block,
            dtype=self._dtype,
            mesh=mesh,
        )
        return decoder.generate(self.params, prompt, key)

    def generate_hf(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        *,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        eos_token_id: int | Sequence[int] | None = None,
        return_logits: bool = False,
        key: jax.Array | None = None,
        block: int = 64,
        mesh: Mesh | None = None,
    ) -> Generation:
        """Decode up to ``max_new_tokens`` tokens after each prompt, like Hugging Face's
        ``generate``.

        ``input_ids``: a list of token lists of any lengths, or an int ``[B, P]`` array with
        ``attention_mask`` ``[B, P]`` (1: real token, 0: padding; padding on the right is
        moved to the left). Each row decodes as it would alone: its positions count its real
        tokens only and padding gets no attention. ``do_sample=False`` is greedy; otherwise
        tokens are drawn from ``logits / temperature`` restricted to the ``top_k`` most likely
        (``None`` or 0: all) and then the ``top_p`` nucleus. ``key``: one PRNG key, split into
        one key per row, or ``[B]`` keys; row ``b`` draws its token at position ``p`` with
        ``fold_in(key[b], p)``. ``eos_token_id`` (default: the config's ``eos_token_ids``):
        one id or several; a row is done once it emits one, and decoding stops when every
        row is. Logits are computed and returned only with ``return_logits=True``. ``mesh``:
        rows (and heads) split over devices, as :class:`TempoDecoder`'s.

        Example::

            out = model.generate_hf([[5, 9, 2], [7]], max_new_tokens=8, eos_token_id=[2, 3])
            out.sequences[:, 3:]  # the new tokens; row b has out.lengths[b] real tokens
        """
        ends = _end_tokens(self.cfg, eos_token_id)
        ids, mask = prompts.left_padded(
            input_ids, attention_mask, vocab=self.cfg.vocab, pad=ends[0] if ends else 0
        )
        (batch, width), new = ids.shape, max_new_tokens
        if not isinstance(new, (int, np.integer)) or isinstance(new, bool) or new < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {new!r}")
        new = int(new)
        if width + new > self.cfg.max_len:
            raise ValueError(
                f"prompt length {width} + max_new_tokens {new} = {width + new} exceeds the "
                f"model's max_len {self.cfg.max_len}; shorten the prompt or max_new_tokens"
            )
        temperature, top_k, top_p = _sampling(do_sample, temperature, top_k, top_p)
        keys = _row_keys(key, batch, needed=do_sample)
        decoder = TempoDecoder(
            self.cfg,
            batch,
            width,
            new,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            end_token=ends,
            ragged=True,
            logits=return_logits,
            block=block,
            dtype=self._dtype,
            mesh=mesh,
        )
        out = decoder.compiled(**decoder.inputs(self.params, np.where(mask, ids, 0), keys, mask))
        out = gathered(out)
        return _generation(decoder.result(out, jnp.asarray(ids)), ids, mask)

    @property
    def _dtype(self) -> Any:
        return jax.tree_util.tree_leaves(self.params)[0].dtype


def _generation(res: dict[str, jax.Array], ids: np.ndarray, mask: np.ndarray) -> Generation:
    """``generate_hf``'s result from :meth:`TempoDecoder.result` for left-padded ``ids``."""
    width = ids.shape[1]
    real = jnp.asarray(mask.sum(axis=1), jnp.int32)
    logits = res.get("logits")
    if logits is not None:  # zero where a padding token was fed or no position ran
        fed = jnp.arange(logits.shape[1]) < res["steps_run"]
        real_fed = jnp.pad(
            jnp.asarray(mask), ((0, 0), (0, logits.shape[1] - width)), constant_values=True
        )
        logits = jnp.where((real_fed & fed)[..., None], logits, 0.0)
    return Generation(
        sequences=jnp.concatenate([jnp.asarray(ids), res["tokens"][:, width:]], axis=1),
        lengths=res["length"] - (width - real),
        prompt_lengths=real,
        steps_run=res["steps_run"],
        logits=logits,
    )


def _end_tokens(cfg: DecoderConfig, eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    """The end tokens: ``eos_token_id`` (one id or several), else the config's."""
    if eos_token_id is None:
        return cfg.eos_token_ids
    ends = np.atleast_1d(np.asarray(eos_token_id))
    if ends.size and ends.dtype.kind not in "iu":
        raise ValueError(f"eos_token_id must be one integer id or several, got {eos_token_id!r}")
    for e in ends.reshape(-1):
        if not 0 <= e < cfg.vocab:
            raise ValueError(
                f"eos_token_id {e} is not a token id: this model's vocabulary is "
                f"0 <= id < {cfg.vocab}"
            )
    return tuple(int(e) for e in ends.reshape(-1))


def _sampling(
    do_sample: bool, temperature: float, top_k: int | None, top_p: float
) -> tuple[float, int | None, float]:
    """The program's temperature (0: greedy), top-k (None: all tokens) and top-p."""
    if not do_sample:
        return 0.0, None, 1.0
    if temperature <= 0:
        raise ValueError(f"do_sample=True needs temperature > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be None or an integer >= 0 (0: all tokens), got {top_k!r}")
    return float(temperature), top_k or None, float(top_p)


def _row_keys(key: jax.Array | None, batch: int, *, needed: bool) -> jax.Array:
    """Raw key data ``[B, 2]``: ``key`` split in ``batch`` keys, or ``key`` when it holds one
    key per row."""
    if key is None:
        if needed:
            raise ValueError("do_sample=True needs a key, e.g. key=jax.random.PRNGKey(0)")
        return jnp.zeros((batch, 2), jnp.uint32)
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (0 if typed else 1):  # one key
        key = jax.random.split(key, batch)
    keys = jax.random.key_data(key) if typed else key
    if keys.shape != (batch, 2):
        raise ValueError(
            f"key must be one PRNG key or one per row ({batch}), got shape {key.shape}"
        )
    return keys
