"""Generation: the batched KV-cached sampler, and the backend seam every generating step calls (library or vLLM)."""
