"""The core: residual-stream activations (batched, padding-correct), direction sets fitted from
group means, the persona and refusal contrasts, interventions (steer, ablate, add back) and greedy
generation under them. Imports foundations, ``prompts`` and ``models`` only.
"""
