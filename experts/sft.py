"""Supervised fine-tuning: the one training loop behind base pretraining, experts and the student."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from experts.lora import LoraSettings, lora_adapters
from experts.snapshot import Snapshot, capture, resume
from generation.turns import IGNORE, mask_tool_results, prompt_ids
from kernels.attention import dense_attention

# step, total steps, loss -> None; flows turn it into a progress bar or a Prefect progress artifact.
ProgressFn = Callable[[int, int, float], None]


# bf16: the forward runs under bfloat16 autocast; weights and optimizer state keep their dtype.
Precision = Literal["fp32", "bf16"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0, le=1.0, description="peak learning rate (cosine decay after warm-up)")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    max_len: int = Field(256, ge=8, description="tokens per example; longer ones are cut")
    loss_on_prompt: bool = Field(False, description="True for pretraining: learn the prompts too")
    attention: Literal["dense", "sparse"] = Field(
        "dense",
        description="dense: every token attends to all before it (V3.2 trains dense, then warms up the indexer); "
        "sparse: attend to the indexer's top-k, as after warm-up",
    )
    precision: Precision = Field(
        "fp32", description="bf16: the forward runs under bfloat16 autocast (weights and optimizer state keep their dtype; "
        "a model loaded in bfloat16 trains in it natively)",
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, about a third more time")
    lora: LoraSettings | None = Field(
        None, description="train LoRA adapters instead of the full weights; merged into them when training ends "
        "(SFT and the student; an expert's GRPO after its SFT still trains the full weights)",
    )
    devices: int = Field(
        1, ge=1, description="data-parallel processes: above 1, training runs under torchrun (one process per GPU, or gloo on CPU), "
        "each on its share of every batch (experts/distributed.py)",
    )

    @model_validator(mode="after")
    def _check_devices(self) -> TrainConfig:
        if self.batch_size < self.devices:
            raise ValueError(f"batch_size ({self.batch_size}) is smaller than devices ({self.devices}): every process needs a share of each batch")
        return self


def encode(tokenizer: PreTrainedTokenizerFast, prompt: str, completion: str, loss_on_prompt: bool, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example: the prompt as generation sees it (`prompt_ids`), the completion, EOS.

    Tool results are written by the environment, not the model, so they never carry loss; nor
    does a BOS (nothing predicts it).
    """
    p = prompt_ids(tokenizer, prompt)
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = [*p, *c]
    prompt_labels = [IGNORE if t == tokenizer.bos_token_id else t for t in p] if loss_on_prompt else [IGNORE] * len(p)
    labels = prompt_labels + c
    return ids[:max_len], mask_tool_results(tokenizer, ids, labels)[:max_len]


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches whose members have similar lengths, in random order.

    Padding every batch to its longest member wastes most of the compute when agent traces are
    three times as long as math problems; sorting within windows of 4 batches keeps the order
    random while cutting the padding.
    """
    order = rng.sample(range(len(lengths)), len(lengths))
    window = batch_size * 4
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def cosine_decay(peak: float, progress: float) -> float:
    """From `peak` at progress 0 down to 0.1 x `peak` at progress 1."""
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cosine_decay(cfg.lr, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))


def adamw(model: PreTrainedModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad, with weight decay on matrices only (not on norms and biases)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95)
    )


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[dict],
    cfg: TrainConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
    snapshot: Snapshot | None = None,
) -> list[float]:
    """Train in place on `examples` (dicts with `prompt` and `completion`); returns the loss per step.

    `seed` draws the batches (and anything else random in training, through torch's global generator).
    `snapshot`: resume from it and save to it as training goes (`experts.snapshot`).
    """
    if not examples:
        raise ValueError("train_sft got no examples")
    encoded = [encode(tokenizer, ex["prompt"], ex["completion"], cfg.loss_on_prompt, cfg.max_len) for ex in examples]
    if cfg.devices > 1:
        from experts.distributed import train_sft_distributed  # imported here: only multi-process runs need it

        return train_sft_distributed(model, tokenizer, encoded, cfg, seed=seed, progress=progress, snapshot=snapshot)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    with training(model, cfg):
        return train_loop(model, tokenizer.pad_token_id, encoded, cfg, adamw(model, cfg), rng, progress, snapshot=snapshot)


@contextlib.contextmanager
def training(model: PreTrainedModel, cfg: TrainConfig) -> Iterator[None]:
    """What a training loop runs inside: LoRA adapters (merged on exit), gradient checkpointing, the
    attention `cfg` asks for, and train mode (eval mode on exit). Build the optimizer inside: with
    LoRA only the adapters require grad."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(lora_adapters(model, cfg.lora))
        if cfg.gradient_checkpointing:
            stack.enter_context(gradient_checkpointing(model))
        if cfg.attention == "dense":
            stack.enter_context(dense_attention(model))
        stack.callback(model.eval)
        model.train()
        yield


@contextlib.contextmanager
def gradient_checkpointing(model: PreTrainedModel) -> Iterator[None]:
    """Inside the block, a forward in train mode keeps only each layer's input and recomputes the rest in the backward."""
    if not model.supports_gradient_checkpointing:
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it")
    model.activation_checkpointing_enable({"use_reentrant": False})
    try:
        yield
    finally:
        model.activation_checkpointing_disable()


def autocast(model: PreTrainedModel, precision: Precision) -> contextlib.AbstractContextManager:
    """The forward's precision: bfloat16 autocast on the model's device for bf16."""
    if precision == "bf16":
        return torch.autocast(device_type=next(model.parameters()).device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_loop(
    model: torch.nn.Module,
    pad_id: int,
    encoded: Sequence[tuple[list[int], list[int]]],
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    progress: ProgressFn | None,
    rank: int = 0,
    world: int = 1,
    snapshot: Snapshot | None = None,
) -> list[float]:
    """`cfg.steps` optimizer steps over length-grouped batches drawn by `rng`; the loss per step.
    Resumes from `snapshot` and saves to it (rank 0) as it goes.

    With `world` > 1 (under torchrun, `model` wrapped in DistributedDataParallel) every process
    draws the same batches and takes its share, `members[rank::world]`. Each scales its summed
    token loss by the whole batch's token count (all-reduced) times `world`, so that DDP's mean of
    the gradients is the single-process gradient of the batch's mean token loss.
    """
    device = next(model.parameters()).device
    unwrapped = getattr(model, "module", model)  # the state of the model DDP wraps, under its own names
    start, carried = resume(snapshot, unwrapped, optimizer, {"batches": rng})
    batches: list[list[int]] = carried.get("batches", [])
    losses: list[float] = carried.get("losses", [])
    for step in range(start, cfg.steps):
        if not batches:
            batches = length_grouped_batches([len(ids) for ids, _ in encoded], cfg.batch_size, rng)
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in batches.pop()[rank::world]], pad_id).items()}
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast(model, cfg.precision):
            if world == 1:
                loss = model(**batch).loss
            else:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
                targets = batch["labels"][:, 1:]
                tokens = (targets != IGNORE).sum().to(torch.float32)
                torch.distributed.all_reduce(tokens)
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum") / tokens
        (loss * world).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
        losses.append(loss.item())
        if snapshot is not None and rank == 0 and snapshot.due(step + 1, cfg.steps):
            snapshot.save(capture(step + 1, cfg.steps, unwrapped, optimizer, {"batches": rng}, batches=batches, losses=losses))
        if progress is not None:
            progress(step + 1, cfg.steps, losses[-1])
    return losses


def ddp_worker(spec_path: str) -> None:
    """One torchrun process: its share of every batch, gradients averaged by DDP."""
    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    try:
        cfg = TrainConfig.model_validate(spec["config"])
        model = AutoModelForCausalLM.from_pretrained(spec["model"]).to("cuda" if cuda else "cpu")
        encoded = [tuple(e) for e in json.loads(Path(spec["examples"]).read_text())]
        rng = random.Random(spec["seed"])
        torch.manual_seed(spec["seed"])
        losses = Path(spec["losses"])
        snapshot = None if spec["snapshot"] is None else Snapshot(Path(spec["snapshot"]["path"]), spec["snapshot"]["every_s"])

        def progress(step: int, total: int, loss: float) -> None:
            if rank == 0:
                with losses.open("a") as f:
                    f.write(f"{step} {loss!r}\n")

        with training(model, cfg):
            # Parameters that get no gradient (a DSA indexer: it runs under no_grad) are allowed.
            ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            curve = train_loop(ddp, spec["pad_id"], encoded, cfg, adamw(model, cfg), rng, progress, rank=rank, world=world, snapshot=snapshot)
        if rank == 0:
            torch.save({"model": model.state_dict(), "losses": curve}, spec["out"])
        # Leave together: a process that tears the group down while another is still in it (rank 0 saving)
        # left that one waiting in destroy_process_group forever (seen once in 3 runs).
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    ddp_worker(sys.argv[1])
