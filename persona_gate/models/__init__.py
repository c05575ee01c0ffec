"""Models: loading any chat model as a TransformerLens bridge (``loading``), the bundled model names
(``registry``), what persona_gate needs of a model (``protocol``), **the adapter** -- the only code
that touches TransformerLens or Hugging Face internals (the ``adapter`` package) -- and model
profiles, the one place that decides model-specific defaults (``profile``), and a model's
architecture without its weights, from ``config.json`` alone, for cost plans (``weightless``).
"""
