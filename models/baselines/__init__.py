"""Hand-written JAX decoders on the stacked parameters of :mod:`models.params`.

All four share one signature, ``generate(cfg, params, prompt, steps, *, key, temperature,
top_p, end_token) -> {"tokens", "length", "logits", "steps_run"}``, and one per-token step
(:mod:`models.baselines.decode_loop`); they differ in how the loop runs and how a step attends
to the KV cache:

- :mod:`~models.baselines.padded`: a Python loop calling one jitted step per token, masked
  attention over the whole preallocated cache;
- :mod:`~models.baselines.scan`: the whole decode as one jitted ``lax.while_loop``, same
  attention;
- :mod:`~models.baselines.tiled`: one jitted ``lax.while_loop`` whose attention visits only the
  cache tiles holding live rows, with an online softmax;
- :mod:`~models.baselines.prefill`: the prompt in one vectorised masked pass (parallel
  prefill), then scan's loop.
"""
