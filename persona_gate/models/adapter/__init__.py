"""The adapter: the only code in persona_gate that touches TransformerLens or Hugging Face internals.

Everything beyond the :class:`~persona_gate.models.protocol.ChatModel` surface goes through this
package, one concern a module:

* **support** (:mod:`.support`) -- :func:`check_supported` tells *before any work* whether a model
  has what a computation needs and raises :class:`~persona_gate.errors.UnsupportedModelError`
  naming the fix otherwise; identity: :func:`architecture`, :func:`eos_ids`, :func:`weights_folder`,
  :func:`input_device`; sizes: :func:`block_parameters`, :func:`weights_size`, :func:`held`, :func:`decoder_layers`;
* **forwards and the head** (:mod:`.forward`) -- :func:`last_logits` passes ``logits_to_keep=1``
  when the wrapped model takes it (on a 262k vocabulary the unembedding of every position would
  cost more than the rest of the forward); :func:`head_logits` applies the final norm and
  unembedding that the bridge itself declares for the architecture (its ``ln_final`` and
  ``unembed`` components, so every architecture TransformerLens supports works without a list of
  our own) and :func:`final_logit_transform`, the one place the output transform (the logit
  soft cap of Gemma 2) is applied;
* **block re-runs** (:mod:`.replay`) -- :func:`record_blocks` records every block's input and call
  arguments during one clean forward (rotary embeddings, masks, ALiBi: whatever the architecture
  passes), and :func:`run_blocks` re-runs blocks ``k..L-1`` from a recorded input (activation
  patching re-runs only what a patch at layer ``k`` changes);
* **generation** (:mod:`.generate`) -- :func:`greedy_generate` decodes through the wrapped model's
  ``generate`` (its layers are the bridge's blocks, so every hook fires) with a fresh greedy
  config and the KV cache on or off; models without one fall back to an uncached argmax loop;
* **weight surgery** (:mod:`.surgery`) -- :func:`merge_lora`, and the residual stream's writers and
  their edits for exporting an intervention as weights (:func:`plain_copy`,
  :func:`residual_writers`, :func:`project_out_of_writes`, :func:`add_to_residual`);
* **plain Hugging Face models** (:mod:`.hf`) -- :func:`reply_logits` for training and
  :func:`save_dequantised` (and :func:`complete_tokenizer_config`) for a GGUF model's cache.

Every name is importable from here (``from persona_gate.models.adapter import head_logits``).

Example::

    check_supported(model, "replay")
    rec, _ = record_blocks(model, ids)           # clean run: inputs of every block
    x = run_blocks(model, rec, 3, rec.inputs[3])
    logits = head_logits(model, x[:, -1])
"""

from __future__ import annotations

from .forward import final_logit_transform, head_logits, last_logits, unembedded_rows
from .generate import greedy_generate
from .hf import complete_tokenizer_config, reply_logits, save_dequantised
from .replay import CACHE_ARGUMENTS, BlockRecord, record_blocks, run_blocks
from .support import (
    NEEDS,
    architecture,
    block_parameters,
    blocks_of,
    check_supported,
    decoder_layers,
    eos_ids,
    head_of,
    held,
    input_device,
    missing_needs,
    weights_folder,
    weights_size,
    wrapped_model,
)
from .surgery import (
    ResidualWriters,
    add_to_residual,
    hf_model_of,
    merge_lora,
    mlp_bias_problem,
    plain_copy,
    project_out_of_writes,
    residual_writers,
    untie_embeddings,
)

_wrapped = wrapped_model  # the name it had before the adapter became a package (tests read it)

__all__ = [
    "BlockRecord",
    "CACHE_ARGUMENTS",
    "NEEDS",
    "ResidualWriters",
    "add_to_residual",
    "architecture",
    "block_parameters",
    "blocks_of",
    "check_supported",
    "complete_tokenizer_config",
    "decoder_layers",
    "eos_ids",
    "final_logit_transform",
    "greedy_generate",
    "head_logits",
    "head_of",
    "held",
    "hf_model_of",
    "input_device",
    "last_logits",
    "merge_lora",
    "missing_needs",
    "mlp_bias_problem",
    "plain_copy",
    "project_out_of_writes",
    "record_blocks",
    "reply_logits",
    "residual_writers",
    "run_blocks",
    "save_dequantised",
    "unembedded_rows",
    "untie_embeddings",
    "weights_folder",
    "weights_size",
    "wrapped_model",
]
