"""The policy model: the contract every model meets, decoders for cached sampling, HuggingFace and LoRA adapters, FSDP2 sharding."""
