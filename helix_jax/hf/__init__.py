"""Hugging Face checkpoints without torch: a folder as `save_pretrained` writes it (config.json and
model.safetensors, or shards listed in model.safetensors.index.json) read into a `ModelConfig`
(`hf.config`) and into this library's parameters, placed by a layout shard by shard
(`hf.weights`). Supported model_types: llama, mistral, qwen2, qwen3, mixtral, qwen3_moe, gpt2;
anything else, or a feature not implemented, is refused by name."""
