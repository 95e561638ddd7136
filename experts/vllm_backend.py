"""The vLLM backend of `experts.generation`: vLLM's offline engine behind the same interface.

vLLM pins a torch, transformers and fastapi that clash with prefect's, so it lives in its own
environment, `.venv-vllm` (`make vllm-env`), and runs in a subprocess, `experts.vllm_worker`; this
module never imports it. The worker loads the model from its checkpoint directory (found through
`model.config._name_or_path`, which `from_pretrained` sets), so the weights served are the ones on
disk. This side keeps every sequence's token ids and runs the tool loop exactly as the native engine
does: a model turn ends at EOS, the tool-call close marker, a stop string or the token budget; a call
is answered by the request's `ToolEnv` here, and the next turn is sent with `<result>...</result>`
appended (vLLM's prefix cache keeps the earlier tokens, so only the result is prefilled).

On CPU vLLM serves dense models only (its sparse-attention kernels are GPU kernels): DeepseekV32
checkpoints generate with backend `native` on CPU and `vllm` on GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from experts.domains.base import CALL_CLOSE, RESULT_CLOSE, RESULT_OPEN, ToolEnv, last_call
from experts.engine.sequence import request_seed
from experts.generation import Completion, GenerateConfig, ProgressFn, Request

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-vllm"


@dataclass(eq=False)
class _Seq:
    index: int
    ids: list[int]  # [BOS] prompt completion, tool results included
    prompt_len: int
    seed: int
    env: ToolEnv | None
    model_tokens: int = 0
    tool_calls: int = 0
    turn: int = 0  # model turns sent so far
    turn_start: int = 0  # where the current model turn began (after the prompt or the last tool result)


def generate_stream(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    requests: Iterable[Request],
    cfg: GenerateConfig,
    progress: ProgressFn | None = None,
) -> Iterator[tuple[int, Completion]]:
    """(request index, completion) as each finishes. `requests` is consumed lazily: at most
    2 x batch_size sequences are in the engine (batch_size decoding, as many queued)."""
    model_dir = checkpoint_dir(model)
    python = worker_python()
    total = len(requests) if isinstance(requests, Sequence) else None
    eos, call_close = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(CALL_CLOSE)
    if call_close == tokenizer.unk_token_id:
        call_close = None  # a tokenizer without our markers (a foreign dense model): no tool loop
    markers = [] if cfg.ignore_eos else [t for t in (eos, call_close) if t is not None]
    special = {tokenizer.pad_token_id, tokenizer.bos_token_id, eos}

    def send_turn(seq: _Seq) -> None:
        seed = seq.seed if seq.turn == 0 else request_seed(seq.seed, seq.turn)  # one vLLM request per turn, each seeded
        params = dict(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_tokens=cfg.max_new_tokens - seq.model_tokens,
            seed=seed,
            ignore_eos=cfg.ignore_eos,
            stop_token_ids=markers,
            stop=list(cfg.stop),
            include_stop_str_in_output=True,  # as the native engine: the text ends with the stop string
            skip_special_tokens=False,  # stop strings see the markers, as in the text we decode
            spaces_between_special_tokens=False,
        )
        key = f"{seq.index}.{seq.turn}"
        worker.send("gen", {"key": key, "ids": seq.ids, "params": params})
        running[key] = seq
        seq.turn += 1

    worker = _Worker(python, model_dir, cfg)
    running: dict[str, _Seq] = {}
    pending = enumerate(requests)
    done = 0
    try:
        while True:
            while len(running) < 2 * cfg.batch_size and (item := next(pending, None)) is not None:
                index, r = item
                if r.env is not None and call_close is None:
                    raise ValueError(f"request {index} has a tool environment but the tokenizer of {model_dir} has no {CALL_CLOSE} token to stop on")
                ids = [tokenizer.bos_token_id, *tokenizer(r.prompt, add_special_tokens=False)["input_ids"]]
                seed = request_seed(cfg.seed, index) if r.seed is None else r.seed
                send_turn(_Seq(index=index, ids=ids, prompt_len=len(ids), seed=seed, env=r.env, turn_start=len(ids)))
            if not running:
                break
            out = worker.receive("out")
            seq = running.pop(out["key"])
            finish = _end_turn(seq, out, tokenizer, cfg, eos, call_close)
            if finish is None:
                send_turn(seq)
                continue
            done += 1
            if progress is not None and total is not None:
                progress(done, total)
            yield seq.index, Completion(
                text=tokenizer.decode([t for t in seq.ids[seq.prompt_len :] if t not in special]),
                finish_reason=finish,
                model_tokens=seq.model_tokens,
                tool_calls=seq.tool_calls,
                ids=seq.ids,
                prompt_len=seq.prompt_len,
            )
        worker.finish()
    finally:
        worker.close()


def _end_turn(seq: _Seq, out: dict, tokenizer: PreTrainedTokenizerFast, cfg: GenerateConfig, eos: int, call_close: int | None) -> str | None:
    """Append a finished turn's tokens; the finish reason, or None after answering a tool call (go on)."""
    new = out["ids"]
    seq.ids += new
    seq.model_tokens += len(new)
    last = new[-1] if new and not cfg.ignore_eos else None
    called = last is not None and last == call_close
    if called and seq.env is not None and seq.tool_calls < cfg.max_tool_turns:
        seq.tool_calls += 1
        text = tokenizer.decode(seq.ids[seq.turn_start :])
        call = last_call(text)
        seq.ids += tokenizer(f"{RESULT_OPEN}{seq.env.call(call)}{RESULT_CLOSE}", add_special_tokens=False)["input_ids"]
        seq.turn_start = len(seq.ids)
        return "length" if seq.model_tokens >= cfg.max_new_tokens else None
    if last is not None and last == eos:
        return "eos"
    if called:
        return "tool_turns"
    if out["finish"] == "stop" and isinstance(out["stop_reason"], str):
        return "stop"
    if out["finish"] == "length":
        return "length"
    raise RuntimeError(f"vLLM ended request {seq.index} with finish_reason={out['finish']!r}, stop_reason={out['stop_reason']!r}")


def checkpoint_dir(model: PreTrainedModel) -> Path:
    """The directory the model was loaded from: vLLM loads the weights (and tokenizer) itself."""
    name = getattr(model.config, "_name_or_path", "") or ""
    path = Path(name)
    if not name or not (path / "config.json").is_file():
        raise ValueError(
            f"backend vllm loads the model from its checkpoint directory, and model.config._name_or_path={name!r} is not one "
            "(no config.json there): load the model with from_pretrained(<checkpoint dir>)"
        )
    return path.resolve()


def worker_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"backend vllm runs in its own environment {VENV}, which is missing: run `make vllm-env`")
    return python


class _Worker:
    """`experts.vllm_worker` in `.venv-vllm`, JSON lines over its stdin/stdout; its log goes to a temporary file."""

    def __init__(self, python: Path, model_dir: Path, cfg: GenerateConfig) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vllm-worker-", suffix=".log", delete=False)
        # Only the repository on the path: the main environment's packages must not leak into vLLM's.
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("VIRTUAL_ENV", None)
        self.proc = subprocess.Popen(
            [str(python), "-m", "experts.vllm_worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.send("init", {"model": str(model_dir), "max_num_seqs": cfg.batch_size, "seed": cfg.seed})
        self.ready = self.receive("ready")

    def send(self, kind: str, body: object) -> None:
        try:
            self.proc.stdin.write(json.dumps({kind: body}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._fail("the vLLM worker exited")

    def receive(self, kind: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._fail("the vLLM worker exited")
        msg = json.loads(line)
        if "error" in msg:  # the worker's own account (a refusal, or the traceback): no log needed
            self.proc.wait()
            raise RuntimeError(f"the vLLM worker failed: {msg['error']}")
        return msg[kind]

    def finish(self) -> None:
        self.send("end", True)
        self.proc.stdin.close()
        if self.proc.wait(timeout=120) != 0:
            self._fail("the vLLM worker exited")

    def close(self) -> None:
        if self.proc.poll() is None:  # stopped early (an error, or the caller dropped the stream)
            self.proc.terminate()  # vLLM shuts its engine processes down on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                f.close()
        self.log.close()
        os.unlink(self.log.name)

    def _fail(self, what: str) -> None:
        rc = self.proc.poll()
        if rc is None:
            try:
                rc = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rc = None
        self.log.flush()
        self.log.seek(0)
        tail = self.log.read()[-4000:]
        raise RuntimeError(f"{what} (exit code {rc}); the end of its log:\n{tail}")
