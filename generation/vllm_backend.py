"""The vLLM backend of `generation.backends`: vLLM's offline engine behind the same interface.

vLLM pins a torch, transformers and fastapi that clash with prefect's, so it lives in its own
environment, `.venv-vllm` (`make vllm-env`), and runs in a subprocess, `generation.vllm_worker`; this
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from generation.turns import Trace, Turns
from generation.types import Completion, EngineConfig, Request, SamplingConfig, request_seed

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-vllm"


@dataclass(eq=False)
class _Seq(Trace):
    index: int = 0
    seed: int = 0
    turn: int = 0  # model turns sent so far


def vllm_stream(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    requests: Iterable[Request],
    sampling: SamplingConfig,
    engine: EngineConfig,
    seed: int,
) -> Iterator[tuple[int, Completion]]:
    """(request index, completion) as each finishes. `requests` is consumed lazily: at most
    2 x batch_size sequences are in the engine (batch_size decoding, as many queued)."""
    model_dir = checkpoint_dir(model)
    python = worker_python()
    turns = Turns(tokenizer, sampling)
    stop_tokens, stop_texts = turns.stop_tokens(), list(sampling.stop) + turns.stop_texts()

    def send_turn(seq: _Seq) -> None:
        turn_seed = seq.seed if seq.turn == 0 else request_seed(seq.seed, seq.turn)  # one vLLM request per turn, each seeded
        params = dict(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_new_tokens - seq.model_tokens,
            seed=turn_seed,
            ignore_eos=sampling.ignore_eos,
            stop_token_ids=stop_tokens,
            stop=stop_texts,
            include_stop_str_in_output=True,  # as the native engine: the text ends with the stop string
            skip_special_tokens=False,  # stop strings see the markers, as in the text we decode
            spaces_between_special_tokens=False,
        )
        key = f"{seq.index}.{seq.turn}"
        worker.send("gen", {"key": key, "ids": seq.ids, "params": params})
        running[key] = seq
        seq.turn += 1

    worker = _Worker(python, model_dir, engine.batch_size, seed)
    running: dict[str, _Seq] = {}
    pending = enumerate(requests)
    try:
        while True:
            while len(running) < 2 * engine.batch_size and (item := next(pending, None)) is not None:
                index, r = item
                trace = turns.start(r.prompt, r.env)
                own_seed = request_seed(seed, index) if r.seed is None else r.seed
                send_turn(_Seq(ids=trace.ids, prompt_len=trace.prompt_len, env=trace.env, index=index, seed=own_seed))
            if not running:
                break
            out = worker.receive("out")
            seq = running.pop(out["key"])
            ended = turns.push_turn(seq, out["ids"])
            if not ended and out["finish"] == "length":
                turns.cut(seq)  # the model's context is full
            elif not ended and not turns.thinking(seq):  # vLLM ended the turn where our rules see no end: say why, not guess
                raise RuntimeError(f"vLLM ended request {seq.index} with finish_reason={out['finish']!r}, stop_reason={out['stop_reason']!r}")
            if seq.finish_reason is None:
                # A tool call was answered, or one written inside a thought stopped vLLM: the next turn goes on.
                send_turn(seq)
                continue
            yield seq.index, turns.completion(seq)
        worker.finish()
    finally:
        worker.close()


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
    """`generation.vllm_worker` in `.venv-vllm`, JSON lines over its stdin/stdout; its log goes to a temporary file."""

    def __init__(self, python: Path, model_dir: Path, max_num_seqs: int, seed: int) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vllm-worker-", suffix=".log", delete=False)
        # Only the repository on the path: the main environment's packages must not leak into vLLM's.
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("VIRTUAL_ENV", None)
        self.proc = subprocess.Popen(
            [str(python), "-m", "generation.vllm_worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.send("init", {"model": str(model_dir), "max_num_seqs": max_num_seqs, "seed": seed})
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
