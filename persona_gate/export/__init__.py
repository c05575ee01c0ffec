"""Take a finding out of persona_gate: edited weights, llama.cpp control vectors, plain directions.

* :func:`export_model` -- an intervention baked into a plain Hugging Face folder (loads with
  ``transformers`` alone; logits equal the hooked model's);
* :func:`export_control_vector` -- a direction set as a llama.cpp ``controlvector`` GGUF;
* ``DirectionSet.export(path)`` -- one safetensors file per set plus a JSON sidecar.
"""

from .control_vector import export_control_vector, llama_cpp_layer
from .weights import EXPORT_FILE, export_model, hooked_equivalent

__all__ = ["EXPORT_FILE", "export_control_vector", "export_model", "hooked_equivalent", "llama_cpp_layer"]

from ..io import register_folder_kind

register_folder_kind("export", "an exported model (persona-gate export model)")
