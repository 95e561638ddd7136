"""The DeepseekV32 forward over the engine's paged latent cache, in absorbed-MLA form with our DSA kernels.

Built from the HF model's own modules and weights (embeddings, norms, projections, MLPs, lm_head), so
a checkpoint runs unchanged. All new tokens of a step are one flat [1, N] batch: projections and MLPs
are per token, and attention reads the shared slot pools by slot id (`kernels.reference.sparse_attention`
with the latent pool as a [1, num_slots, Dc + Dr] key tensor). The math is `kernels.mla.SparseMLAAttention`'s;
only the indexer runs per sequence, over that sequence's own keys, so a sequence's selection (ties
included) is the one it gets when it runs alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel
from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Attention, apply_rotary_pos_emb_interleave

from generation.engine.cache import KVCache
from generation.engine.sequence import Sequence
from kernels import reference
from kernels.attention import use_triton
from kernels.mla import indexer_projections, indexer_topk

BLOCK_SIZE = 16
# Decode scores the indexer over key tables padded to the longest sequence; sequences sorted by
# length into this many groups pad each group only to its own longest (mixed lengths waste half otherwise).
DECODE_GROUPS = 4


@dataclass
class _Step:
    """Flat layout of one step's new tokens (N of them, from B sequences)."""

    seqs: list[Sequence]
    prefill: bool
    input_ids: torch.Tensor  # [1, N]
    positions: torch.Tensor  # [1, N]
    write_slots: torch.Tensor  # [N] cache slot of each new token
    last: torch.Tensor  # [B] index in N of each sequence's last new token
    # decode: sequences grouped by length, each group (rows [G], slot table [G, Tmax] (0 past the end), lengths [G])
    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None


class ModelRunner:
    """Owns the KV cache and runs steps of `model` over it."""

    def __init__(self, model: PreTrainedModel, cache_tokens: int) -> None:
        if model.config.model_type != "deepseek_v32":
            raise ValueError(f"the native engine runs DeepseekV32 models, not {model.config.model_type!r}: use backend 'hf'")
        self.model = model.eval()
        cfg = model.config
        param = next(model.parameters())
        self.cache = KVCache(
            num_layers=cfg.num_hidden_layers,
            num_blocks=-(-cache_tokens // BLOCK_SIZE),
            block_size=BLOCK_SIZE,
            latent_dim=cfg.kv_lora_rank + cfg.qk_rope_head_dim,
            index_dim=cfg.index_head_dim,
            dtype=param.dtype,
            device=param.device,
        )
        self.device = param.device

    @torch.no_grad()
    def run(self, seqs: list[Sequence], prefill: bool) -> torch.Tensor:
        """Feed every sequence its uncached tokens; returns [B, V] fp32 logits at each one's last token.

        The sequences' blocks must already cover their length (the scheduler grows them).
        """
        step = self._prepare(seqs, prefill)
        inner = self.model.model
        h = inner.embed_tokens(step.input_ids)  # [1, N, hidden]
        rope = inner.rotary_emb(h, position_ids=step.positions)
        for i, layer in enumerate(inner.layers):
            h = h + self._attention(layer.self_attn, layer.input_layernorm(h), rope, step, i)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = inner.norm(h[:, step.last])
        for seq in seqs:
            seq.num_cached = len(seq)
        return self.model.lm_head(h)[0].float()

    def _prepare(self, seqs: list[Sequence], prefill: bool) -> _Step:
        ids, positions, slots, last = [], [], [], []
        for seq in seqs:
            start = seq.num_cached
            ids += seq.ids[start:]
            positions += range(start, len(seq))
            slots.append(seq.slots[start : len(seq)])
            last.append(len(ids) - 1)
        as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        step = _Step(seqs, prefill, as_tensor(ids)[None], as_tensor(positions)[None], torch.cat(slots), as_tensor(last))
        if not prefill:
            order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
            size = -(-len(seqs) // DECODE_GROUPS)
            step.groups = []
            for start in range(0, len(seqs), size):
                rows = order[start : start + size]
                table = pad_sequence([seqs[i].slots[: len(seqs[i])] for i in rows], batch_first=True)
                step.groups.append((as_tensor(rows), table, as_tensor([len(seqs[i]) for i in rows])))
        return step

    def _attention(
        self, attn: DeepseekV32Attention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], step: _Step, layer: int
    ) -> torch.Tensor:
        """Absorbed sparse MLA of the step's N tokens ([1, N, hidden] -> [1, N, hidden]), writing their cache slots."""
        n = x.shape[1]
        d_nope, d_rope, d_c, d_v = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.kv_lora_rank, attn.v_head_dim
        cos, sin = rope
        q_resid = attn.q_a_layernorm(attn.q_a_proj(x))
        q = attn.q_b_proj(q_resid).view(1, n, attn.num_heads, attn.qk_head_dim)
        q_nope, q_rot = q.split([d_nope, d_rope], dim=-1)
        kv_pass, k_rot = attn.kv_a_proj_with_mqa(x).split([d_c, d_rope], dim=-1)
        q_rot, k_rot = apply_rotary_pos_emb_interleave(q_rot, k_rot[:, :, None], cos, sin, unsqueeze_dim=2)
        latent_pool, key_pool = self.cache.latent[layer], self.cache.index_keys[layer]
        iq, ik, weights = indexer_projections(attn, x, q_resid, rope)
        # Written before selecting: every query attends to itself.
        latent_pool[step.write_slots] = torch.cat([attn.kv_a_layernorm(kv_pass), k_rot[:, :, 0]], dim=-1)[0]
        key_pool[step.write_slots] = ik[0]
        select = self._select_prefill if step.prefill else self._select_decode
        indices = select(attn, iq, weights, key_pool, step)  # [1, N, K] slot ids, -1 = empty

        w_kv = attn.kv_b_proj.weight.view(attn.num_heads, d_nope + d_v, d_c)
        q_abs = torch.cat([torch.einsum("bshn,hnc->bshc", q_nope, w_kv[:, :d_nope]), q_rot], dim=-1)  # [1, N, H, Dc + Dr]
        pool = latent_pool[None]  # [1, num_slots, Dc + Dr]: one key/value tensor shared by every sequence
        out_latent = _ops(q_abs).sparse_attention(q_abs, pool, pool[..., :d_c], indices, attn.scaling)  # [1, N, H, Dc]
        out = torch.einsum("bshc,hvc->bshv", out_latent, w_kv[:, d_nope:])
        return attn.o_proj(out.reshape(1, n, -1))

    @staticmethod
    def _select_prefill(attn: DeepseekV32Attention, iq: torch.Tensor, weights: torch.Tensor, key_pool: torch.Tensor, step: _Step) -> torch.Tensor:
        """Per sequence: its new queries against all its keys (chunked, causal), positions mapped to slots."""
        out, start = [], 0
        for seq in step.seqs:
            end = start + seq.pending
            slots = seq.slots[: len(seq)]
            pos = indexer_topk(iq[:, start:end], key_pool[slots][None], weights[:, start:end], attn.indexer.softmax_scale, attn.indexer.index_topk)
            out.append(torch.where(pos >= 0, slots[pos.clamp(min=0).long()], -1)[0])  # [S_i, K_i]
            start = end
        width = max(x.shape[-1] for x in out)
        return torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=-1) for x in out]).to(torch.int32)[None]

    @staticmethod
    def _select_decode(attn: DeepseekV32Attention, iq: torch.Tensor, weights: torch.Tensor, key_pool: torch.Tensor, step: _Step) -> torch.Tensor:
        """One query per sequence: scores and top-k batched per length group over padded key tables; slot ids out."""
        k = attn.indexer.index_topk
        out = torch.full((len(step.seqs), min(k, max(int(g[2].max()) for g in step.groups))), -1, dtype=torch.long, device=iq.device)
        for rows, table, lengths in step.groups:  # rows [G], table [G, Tmax], lengths [G]
            valid = torch.arange(table.shape[1], device=table.device) < lengths[:, None]
            scores = _ops(iq).indexer_scores(
                iq[0, rows, None], key_pool[table], weights[0, rows, None], q_positions=(lengths - 1)[:, None],
                scale=attn.indexer.softmax_scale, key_padding_mask=valid,
            )[:, 0]  # [G, Tmax]
            kg = min(k, table.shape[1])
            values, top = scores.topk(min(kg + 1, table.shape[1]), dim=-1)
            indices = table.gather(1, top[:, :kg]).masked_fill(values[:, :kg] == float("-inf"), -1)
            # Top-k breaks ties by position in the row, and padding moves them: a row whose k-th and
            # (k+1)-th scores tie is redone over exactly its own keys, so a sequence selects what it
            # selects alone, whatever batch it is in. Elsewhere the selected set is unique.
            if values.shape[1] > kg:
                tied = (values[:, kg - 1] == values[:, kg]) & values[:, kg].isfinite()
                for g in torch.nonzero(tied)[:, 0].tolist():
                    indices[g] = table[g, scores[g, : int(lengths[g])].topk(kg).indices]
            out[rows, :kg] = indices
        return out.to(torch.int32)[None]  # [1, B, K]


def _ops(x: torch.Tensor) -> ModuleType:
    if use_triton(x):
        # Deferred so the CPU path never imports the Triton kernels.
        from kernels import triton_dsa

        return triton_dsa
    return reference
