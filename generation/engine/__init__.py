"""The native generation engine: continuous batching over a paged latent KV cache with DSA attention.

One module per job, after nano-vllm: `sequence` (one request's state), `cache` (the KV slot pools and
each sequence's block table), `scheduler` (which sequences run this step), `runner` (the
DeepseekV32 forward over the cache), `sampler` (next tokens), `engine` (the loop).
"""
