"""The vLLM side of `generation.vllm_backend`: runs in `.venv-vllm`, never in the main environment.

Started as `.venv-vllm/bin/python -m generation.vllm_worker`. It imports only the standard library
and vLLM (that environment's transformers is older than ours), and speaks JSON lines:

    stdin   {"init": {"model": dir, "max_num_seqs": n, "seed": s}}
            {"gen": {"key": str, "ids": [...], "params": {SamplingParams fields}}}   any number, any time
            {"end": true}                                                             no more "gen"
    stdout  {"ready": {"platform": ..., "architecture": ..., "dtype": ...}}
            {"out": {"key": str, "ids": [new token ids], "finish": "stop" | "length" | ..., "stop_reason": null | int | str}}
            {"error": str}                                                            then exit 1

Each "gen" is one model turn: the token ids so far in, the new ids out when the turn ends (EOS, a
stop token such as the tool-call close marker, a stop string, or max_tokens). The tool loop lives in
the main process, which sends the next turn with the tool result appended; the prefix cache keeps
the earlier tokens' KV, so a continuation only prefills the result.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import traceback

# DeepseekV32 (DSA) checkpoints: vLLM serves them with its sparse-attention kernels, which exist for GPUs only.
SPARSE_ARCHITECTURES = {"DeepseekV32ForCausalLM"}


def main() -> int:
    # The protocol owns the real stdout; anything else printed (vLLM's logs, progress bars, its
    # child processes, which inherit fd 1) goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(kind: str, body: object) -> None:
        proto.write(json.dumps({kind: body}) + "\n")

    inbox: queue.Queue[dict | None] = queue.Queue()
    threading.Thread(target=_read_stdin, args=(inbox,), daemon=True).start()
    first = inbox.get()
    if first is None or "init" not in first:
        return 1
    init = first["init"]
    try:
        llm, ready = _start_engine(init)
    except Exception as e:  # reported to the main process, which raises it with the log tail
        send("error", f"{type(e).__name__}: {e}")
        return 1
    send("ready", ready)
    try:
        _serve(llm.llm_engine, inbox, send)
    except Exception:  # the traceback goes to the main process: vLLM's shutdown messages follow it in the log
        send("error", traceback.format_exc())
        return 1
    return 0


def _serve(engine, inbox: queue.Queue, send) -> None:
    """Add each "gen" as a vLLM request and step the engine, reporting turns as they finish, until "end"."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    ended = False
    while not (ended and not engine.has_unfinished_requests()):
        # Wait for work only when the engine has none; otherwise take what has arrived and step.
        block = not engine.has_unfinished_requests()
        while True:
            try:
                msg = inbox.get(block=block)
            except queue.Empty:
                break
            block = False
            if msg is None:  # stdin closed: after "end" as expected, else the main process went away
                if not ended:
                    raise SystemExit(1)
                break
            if "end" in msg:
                ended = True
                continue
            gen = msg["gen"]
            params = SamplingParams(**gen["params"], output_kind=RequestOutputKind.FINAL_ONLY)
            engine.add_request(gen["key"], TokensPrompt(prompt_token_ids=gen["ids"]), params)
        if engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    c = out.outputs[0]
                    send("out", {"key": out.request_id, "ids": list(c.token_ids), "finish": c.finish_reason, "stop_reason": c.stop_reason})


def _start_engine(init: dict):
    from vllm import LLM
    from vllm.platforms import current_platform

    cpu = current_platform.is_cpu()
    with open(os.path.join(init["model"], "config.json")) as f:
        architectures = json.load(f).get("architectures") or []
    if cpu and SPARSE_ARCHITECTURES & set(architectures):
        raise ValueError(
            f"vLLM on CPU serves dense models only and {init['model']} is {architectures[0]} (DeepSeek Sparse Attention, "
            "GPU kernels only): use generate.backend=native on CPU"
        )
    if cpu:
        # One process instead of three (front end, engine core, model worker): vLLM's import and
        # start-up dominate on CPU, where it serves small dense models. VLLM_ENABLE_V1_MULTIPROCESSING=1
        # in the environment keeps vLLM's default.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
    kwargs = dict(
        model=init["model"],
        seed=init["seed"],
        max_num_seqs=init["max_num_seqs"],
        # On CPU "GPU memory" is host RAM: the default 0.9 would reserve nearly all of it for KV blocks
        # (VLLM_CPU_KVCACHE_SPACE=<GiB> in the environment sets the KV cache size outright).
        gpu_memory_utilization=0.3 if cpu else 0.9,
        # torch.compile of the model takes minutes on CPU and gains little for small models.
        enforce_eager=cpu,
        # A chunked (partial) prefill samples a token it then discards and rewinds the request's
        # generator, which CPU generators cannot do ("CPU Generator does not use offset") once
        # requests carry seeds: whole prompts per step instead.
        enable_chunked_prefill=not cpu,
        disable_log_stats=True,
    )
    if in_process:
        kwargs["distributed_executor_backend"] = "uni"
    llm = LLM(**kwargs)
    ready = {"platform": current_platform.device_name, "architecture": architectures[0] if architectures else None, "dtype": str(llm.llm_engine.model_config.dtype)}
    return llm, ready


def _read_stdin(inbox: queue.Queue) -> None:
    for line in sys.stdin:
        if line.strip():
            inbox.put(json.loads(line))
    inbox.put(None)


if __name__ == "__main__":  # vLLM starts its engine processes by re-importing this module: start only once
    sys.exit(main())
