"""The keyword transformers gives the LLM's key/value cache, in its inputs and outputs: ``cache`` from
5.25 on, ``past_key_values`` before. 5.25 still takes the old name, with a FutureWarning on every
layer's call, and drops it in 5.40, so the project passes whichever name the installed version uses."""

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_KEYWORD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_argument(cache) -> dict:
    """``{name: cache}`` to pass to a forward or ``generate()``."""
    return {CACHE_KEYWORD: cache}


def output_cache(output):
    """The cache a forward or ``generate(return_dict_in_generate=True)`` returned."""
    return getattr(output, CACHE_KEYWORD)
