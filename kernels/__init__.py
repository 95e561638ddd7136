"""DeepSeek Sparse Attention kernels (indexer, top-k, sparse attention) and their registration into transformers."""
