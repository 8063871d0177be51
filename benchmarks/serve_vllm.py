"""For a GPU host: does a twossp export serve in vLLM, does vLLM score text as transformers does, and
how much faster does it generate than the dense model? One script, run in one go.

    # first, on any machine with the run's database: the pruned model as a Hugging Face folder
    # (Nemotron-NAS schema: DeciLMForCausalLM, block_configs, its own code named by auto_map)
    twossp export RUN_KEY exports/llama-2ssp-0.5
    # then, on the GPU host (vLLM >= 0.8.3, transformers, torch; twossp need not be installed)
    python benchmarks/serve_vllm.py --dense /models/llama-3.1-8b --pruned exports/llama-2ssp-0.5 \\
        --out $OUT/serve_vllm.json
    # several exports against one dense model, another text; --enforce-eager starts vLLM sooner (no
    # CUDA graphs to capture) but then measures it without them
    python benchmarks/serve_vllm.py --dense /models/llama-3.1-8b --pruned exports/a --pruned exports/b \\
        --enforce-eager --text my.txt --out $OUT/serve_vllm.json

For each folder (``--dense``, then every ``--pruned``), in two child processes of this script, one
after the other, so that each engine starts on an empty GPU and a crash stays that model's:
1. transformers: ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` on the GPU in
   ``--dtype``; the log-probability of every token of the text windows given the tokens before it
   (log-softmax of the float32 logits);
2. vLLM offline: ``LLM(model=DIR, trust_remote_code=True)``; the same log-probabilities as prompt
   log-probabilities (``SamplingParams(max_tokens=1, prompt_logprobs=1)`` on token-id prompts), then
   generation throughput: ``--prompts`` prompts of ``--prompt-len`` tokens, ``--max-tokens`` new
   tokens each (greedy, end-of-sequence ignored so every request makes all of them), at most
   ``--batch`` sequences at once, after a short warm-up; the median of ``--repeats`` timed rounds.

The text (default: WikiText-2 test from the repository's ``shared/data`` folder, as a device machine
sees it, else ``../shared/data`` or ``TWOSSP_BENCH_DATA``; ``--text`` names any plain-text file) is
tokenised once with the dense folder's tokenizer, without special tokens, ``\\r`` removed (as
``prune_smollm2.py`` does): its first ``--tokens`` tokens make ``--tokens // --window`` windows to
score; the prompts are cut from the tokens after them. Every model and both engines get exactly
these token ids; the first token of a window has no log-probability, so each window scores
``--window - 1`` tokens. A failure (a folder vLLM refuses, out of memory, a timeout) is reported in
the table with its error and the next model goes on; each child's full log is kept beside the
report (``--out x/serve_vllm.json``: ``x/serve_vllm_logs/``). Exit status 0 when every engine ran on
every model, 1 when one failed, 2 when there is no text to score.

Prints a Markdown table: per model, whether each engine loaded, the perplexity from transformers
and from vLLM, the largest and mean |difference| of the per-token log-probabilities, vLLM output and
total tokens per second, and output tokens per second against the dense model's. Writes everything
(settings, versions, GPU, per-model figures, the five worst-matching tokens) to ``--out`` as JSON.
Nothing here imports twossp: the point is that an export loads without it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
WIKITEXT_FILE = Path("wikitext-2-raw") / "wiki.test.raw"
# Where the reference data lies: inside the repository on a device machine, beside it on a developer's.
DATA_CANDIDATES = (REPO / "shared" / "data", REPO.parent / "shared" / "data")
ENGINES = ("transformers", "vllm")


# ------------------------------------------------------------------------------------------ the parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A twossp export served by vLLM: log-probabilities against "
                                            "transformers, and generation throughput against the dense model.")
    p.add_argument("--dense", type=Path, help="the dense Hugging Face checkpoint folder")
    p.add_argument("--pruned", type=Path, action="append", default=[],
                   help="a `twossp export` folder (repeat for several)")
    p.add_argument("--text", type=Path, default=None, help="plain text to score and cut prompts from "
                   "(default: WikiText-2 test from --data)")
    p.add_argument("--data", type=Path, default=None,
                   help="the reference-data folder (default: shared/data in the repository, ../shared/data, "
                        "or TWOSSP_BENCH_DATA)")
    p.add_argument("--tokens", type=int, default=2048, help="tokens of text to score (default 2048)")
    p.add_argument("--window", type=int, default=512, help="tokens per scored window (default 512)")
    p.add_argument("--prompts", type=int, default=256, help="prompts for the throughput run (default 256)")
    p.add_argument("--prompt-len", type=int, default=128, help="tokens per prompt (default 128)")
    p.add_argument("--max-tokens", type=int, default=128, help="new tokens per prompt (default 128)")
    p.add_argument("--batch", type=int, default=256,
                   help="at most this many sequences at once in vLLM (max_num_seqs; default 256)")
    p.add_argument("--repeats", type=int, default=1, help="timed throughput rounds; the median is kept")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--max-model-len", type=int, default=None,
                   help="vLLM context (default: what the windows and prompts need)")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM without CUDA graphs")
    p.add_argument("--device", default="cuda", help="the transformers device (default cuda)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per child process (default 1800)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)  # internal: a child's job file
    args = p.parse_args(argv)
    if args.one is None:
        if args.dense is None:
            p.error("--dense is required")
        if args.tokens < args.window or args.window < 2:
            p.error("--tokens must hold at least one --window of at least 2 tokens")
    return args


class Log:
    """Progress on stderr, stamped with the seconds since start; stdout stays for the table."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def text_file(args: argparse.Namespace) -> Path:
    """The text to score: ``--text``, else WikiText-2 test in the first data folder that holds it."""
    if args.text is not None:
        if not args.text.is_file():
            fail(f"--text {args.text} is not a file")
        return args.text
    env = os.environ.get("TWOSSP_BENCH_DATA")
    folders = [args.data] if args.data else [*DATA_CANDIDATES, *([Path(env)] if env else [])]
    for folder in folders:
        if (folder / WIKITEXT_FILE).is_file():
            return folder / WIKITEXT_FILE
    tried = ", ".join(str(f / WIKITEXT_FILE) for f in folders)
    fail(f"no text to score: {tried} not found; give a plain-text file with --text FILE "
         "or the reference-data folder with --data DIR")


def load_tokenizer(folder: Path) -> Any:
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()  # the text is longer than the context on purpose
    return AutoTokenizer.from_pretrained(folder)


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8").replace("\r", "")


def cut(ids: list[int], args: argparse.Namespace) -> tuple[list[list[int]], list[list[int]]]:
    """Scoring windows from the start of the text, throughput prompts from the tokens after them."""
    if len(ids) < args.tokens:
        fail(f"the text has {len(ids)} tokens, fewer than --tokens {args.tokens}")
    count = args.tokens // args.window
    windows = [ids[i * args.window:(i + 1) * args.window] for i in range(count)]
    rest = ids[count * args.window:] or ids
    need = args.prompts * args.prompt_len
    stream = rest * math.ceil(need / len(rest))  # a short text is reused: prompts repeat, which is fine here
    prompts = [stream[i * args.prompt_len:(i + 1) * args.prompt_len] for i in range(args.prompts)]
    return windows, prompts


def model_summary(folder: Path) -> dict[str, Any]:
    """What config.json says the model is, and how many bytes of weights it holds."""
    summary: dict[str, Any] = {"path": str(folder)}
    config_file = folder / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        summary.update(architectures=config.get("architectures"), model_type=config.get("model_type"),
                       blocks=config.get("num_hidden_layers"))
        blocks = config.get("block_configs") or []
        if blocks:
            summary["attention_kept"] = sum(not b.get("attention", {}).get("no_op", False) for b in blocks)
            summary["ffn_kept"] = sum(not b.get("ffn", {}).get("no_op", False) for b in blocks)
    summary["weights_bytes"] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return summary


def root_error(log_text: str) -> str:
    """The line of a child's log that says why it failed.

    vLLM's engine process prints the cause and the caller then raises a generic "Engine core
    initialization failed", so the last exception line that is not that generic one is the cause."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    pattern = re.compile(r"^([\w.]*(Error|Exception|Exit|Interrupt)\w*)(:|$)")
    errors = [line for line in lines if pattern.match(line)]
    specific = [line for line in errors if "Engine core initialization failed" not in line]
    chosen = (specific or errors or lines or ["failed without output"])[-1]
    return chosen[:500]


def run_child(job: dict[str, Any], work: Path, log_path: Path, timeout: int) -> dict[str, Any]:
    """Run one engine on one model in a child process of its own session, and read back its result.

    The child's whole process group is killed afterwards, whatever happened: vLLM starts engine and
    worker processes, and one left behind would hold GPU memory that the next model needs."""
    job_file = work / f"{log_path.stem}.job.json"
    job["result"] = str(work / f"{log_path.stem}.result.json")
    job_file.write_text(json.dumps(job), encoding="utf-8")
    begin = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--one", str(job_file)],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status: int | str = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout} s"
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group had already ended: nothing left behind
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    time.sleep(3)  # the driver frees a killed process's memory shortly after, not at once
    result_file = Path(job["result"])
    result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
    result["child_seconds"] = time.perf_counter() - begin
    if status != 0 or "error" in result:
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
        cause = root_error(log_text)
        result["error"] = result.get("error") or cause
        if cause not in result["error"]:
            result["error"] += f" (cause: {cause})"
        if isinstance(status, str):
            result["error"] = f"{status}; {result['error']}"
        result["log_tail"] = log_text.splitlines()[-30:]
    result["log"] = str(log_path)
    return result


def compare(windows: list[list[int]], hf: dict[str, Any], vllm: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Perplexity from each engine, and how far apart their per-token log-probabilities are."""
    out: dict[str, Any] = {}
    flat: dict[str, list[float]] = {}
    for name, result in (("transformers", hf), ("vllm", vllm)):
        if "logprobs" in result:
            flat[name] = [x for window in result.pop("logprobs") for x in window]
            out[f"{name}_perplexity"] = math.exp(-statistics.fmean(flat[name]))
    if len(flat) == 2:
        diffs = [abs(a - b) for a, b in zip(flat["transformers"], flat["vllm"], strict=True)]
        targets = [(w, i, window[i]) for w, window in enumerate(windows) for i in range(1, len(window))]
        worst = sorted(range(len(diffs)), key=diffs.__getitem__, reverse=True)[:5]
        out.update(max_abs_diff=max(diffs), mean_abs_diff=statistics.fmean(diffs), scored_tokens=len(diffs),
                   worst=[{"window": targets[k][0], "position": targets[k][1], "token": targets[k][2],
                           "text": tokenizer.decode([targets[k][2]]), "transformers": flat["transformers"][k],
                           "vllm": flat["vllm"][k]} for k in worst])
    return out


def row(record: dict[str, Any], dense_speed: float | None) -> list[str]:
    def figure(key: str, fmt: str) -> str:
        value = record["comparison"].get(key, record["vllm"].get(key))
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    loaded = ["ok" if "error" not in record[e] else "FAILED" for e in ENGINES]
    speed = record["vllm"].get("output_tokens_per_second")
    speedup = f"{speed / dense_speed:.2f}x" if speed and dense_speed else "-"
    errors = "; ".join(f"{e}: {record[e]['error']}" for e in ENGINES if "error" in record[e])
    return [record["name"], *loaded, figure("transformers_perplexity", ".4f"), figure("vllm_perplexity", ".4f"),
            figure("max_abs_diff", ".4f"), figure("mean_abs_diff", ".5f"), figure("output_tokens_per_second", ",.0f"),
            figure("total_tokens_per_second", ",.0f"), speedup, errors.replace("|", "/") or "-"]


def print_table(report: dict[str, Any]) -> None:
    header = ["model", "transformers", "vLLM", "transformers ppl", "vLLM ppl", "max abs dlogprob",
              "mean abs dlogprob", "output tok/s", "total tok/s", "speed-up vs dense", "error"]
    dense_speed = report["models"][0]["vllm"].get("output_tokens_per_second")
    print(f"\n{report['scored_windows']} windows of {report['settings']['window']} tokens from {report['text']}; "
          f"{report['settings']['prompts']} prompts x {report['settings']['prompt_len']} tokens, "
          f"{report['settings']['max_tokens']} new; {report['settings']['dtype']}; GPU {report.get('gpu') or '?'}\n")
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|" + "---:|" * 7 + "---|")
    for record in report["models"]:
        print("| " + " | ".join(row(record, dense_speed)) + " |")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in ("torch", "transformers", "vllm"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def git_revision() -> str | None:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip() or None


def model_names(args: argparse.Namespace) -> list[tuple[str, Path]]:
    names = [("dense", args.dense)]
    for folder in args.pruned:
        name = folder.resolve().name
        taken = {n for n, _ in names}
        names.append((name if name not in taken else f"{name}#{len(names)}", folder))
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:
        return child_main(args.one)
    log = Log()
    path = text_file(args)
    tokenizer, text = load_tokenizer(args.dense), read_text(path)
    # Text tokenises to far fewer tokens than characters: 16 characters a token spares tokenising a huge file.
    ids = tokenizer(text[: 16 * (args.tokens + args.prompts * args.prompt_len)], add_special_tokens=False)["input_ids"]
    windows, prompts = cut(ids, args)
    log(f"{len(ids):,} tokens of {path}: {len(windows)} windows to score, {len(prompts)} prompts")
    logs = Path(tempfile.mkdtemp(prefix="serve_vllm_")) if args.out is None else \
        args.out.parent / f"{args.out.stem}_logs"
    logs.mkdir(parents=True, exist_ok=True)
    logs = logs.resolve()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("one", "out")}
    settings["pruned"] = [str(p) for p in args.pruned]
    max_model_len = args.max_model_len or max(args.window + 1, args.prompt_len + args.max_tokens)
    common = {"dtype": args.dtype, "windows": windows, "prompts": prompts, "max_tokens": args.max_tokens,
              "batch": args.batch, "repeats": args.repeats, "gpu_memory_utilization": args.gpu_memory_utilization,
              "max_model_len": max_model_len, "enforce_eager": args.enforce_eager, "device": args.device,
              "check_text": text[:4000], "check_ids": tokenizer(text[:4000], add_special_tokens=False)["input_ids"]}
    report: dict[str, Any] = {"text": str(path), "text_tokens": len(ids), "scored_windows": len(windows),
                              "settings": settings, "versions": versions(), "host": platform.node(),
                              "git": git_revision(), "logs": str(logs), "models": []}
    for name, folder in model_names(args):
        record: dict[str, Any] = {"name": name, "model": model_summary(folder)}
        for engine in ENGINES:
            log(f"{name}: {engine} ...")
            job = {**common, "engine": engine, "model": str(folder.resolve())}
            record[engine] = run_child(job, logs, logs / f"{name}.{engine}.log", args.timeout)
            log(f"{name}: {engine} " + (f"FAILED: {record[engine]['error']}" if "error" in record[engine] else
                                          f"done in {record[engine]['child_seconds']:.0f} s"))
            report["gpu"] = report.get("gpu") or record[engine].get("gpu")
        record["comparison"] = compare(windows, record["transformers"], record["vllm"], tokenizer)
        report["models"].append(record)
        if args.out is not None:  # written after every model, so a run cut short keeps what it measured
            args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print_table(report)
    if args.out is not None:
        log(f"wrote {args.out}; child logs in {logs}")
    return 0 if all("error" not in r[e] for r in report["models"] for e in ENGINES) else 1


# ------------------------------------------------------------------------------------------ the children


def child_main(job_file: Path) -> int:
    """One engine on one model; the result goes to the job's result file (and stdout), the error too."""
    job = json.loads(job_file.read_text(encoding="utf-8"))
    runner = run_transformers if job["engine"] == "transformers" else run_vllm
    try:
        result = runner(job)
    except Exception as error:  # recorded for the table, then raised again: the traceback goes to the log
        save_result(job, {"error": f"{type(error).__name__}: {error}"[:1000]})
        raise
    save_result(job, result)
    print(json.dumps({k: v for k, v in result.items() if k != "logprobs"}), flush=True)
    return 0


def save_result(job: dict[str, Any], result: dict[str, Any]) -> None:
    Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")


def tokenizer_check(job: dict[str, Any]) -> str:
    """Whether the folder's own tokenizer gives the dense tokenizer's ids (vLLM detokenises with it)."""
    from transformers import AutoTokenizer

    try:
        ids = AutoTokenizer.from_pretrained(job["model"])(job["check_text"], add_special_tokens=False)["input_ids"]
    except (OSError, ValueError) as error:
        return f"no tokenizer: {type(error).__name__}: {error}"[:300]
    return "same as dense" if ids == job["check_ids"] else "DIFFERENT from dense"


def transformers_dtype_argument() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; the GPU host's vLLM may pin an older one."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def run_transformers(job: dict[str, Any]) -> dict[str, Any]:
    """Per-token log-probabilities of the windows, each window one forward, log-softmax in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device(job["device"])
    dtype = getattr(torch, job["dtype"])
    begin = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(job["model"], trust_remote_code=True,
                                                 **{transformers_dtype_argument(): dtype})
    model = model.to(device).eval()
    loaded = time.perf_counter() - begin
    logprobs = []
    begin = time.perf_counter()
    with torch.inference_mode():
        for window in job["windows"]:
            ids = torch.tensor([window], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            logprobs.append(torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])[:, 0].tolist())
    on_cuda = device.type == "cuda"
    return {"load_seconds": loaded, "score_seconds": time.perf_counter() - begin, "logprobs": logprobs,
            "model_class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if on_cuda else None,
            "gpu": torch.cuda.get_device_name(device) if on_cuda else str(device), "tokenizer": tokenizer_check(job)}


def prompt_logprobs(output: Any, window: list[int]) -> list[float]:
    """The log-probability vLLM gave each prompt token after the first (which has none).

    With ``prompt_logprobs=k`` each position holds a dict token id -> Logprob of the k most likely
    tokens plus the prompt's own token; k = 1 rather than 0 because some early V1 releases returned
    no prompt log-probabilities at all for 0."""
    entries = output.prompt_logprobs
    if entries is None or len(entries) != len(window):
        raise RuntimeError(f"vLLM returned {None if entries is None else len(entries)} prompt log-probability "
                           f"entries for a prompt of {len(window)} tokens")
    return [entries[i][window[i]].logprob for i in range(1, len(window))]


def run_vllm(job: dict[str, Any]) -> dict[str, Any]:
    """vLLM offline: prompt log-probabilities of the windows, then timed generation of the prompts."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    begin = time.perf_counter()
    # Prefix caching off: early V1 releases refused prompt log-probabilities with it on, and the
    # prompts share no prefix, so throughput does not depend on it.
    llm = LLM(model=job["model"], trust_remote_code=True, dtype=job["dtype"],
              gpu_memory_utilization=job["gpu_memory_utilization"], max_model_len=job["max_model_len"],
              max_num_seqs=job["batch"], enforce_eager=job["enforce_eager"], enable_prefix_caching=False, seed=0)
    loaded = time.perf_counter() - begin
    scoring = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    windows = [TokensPrompt(prompt_token_ids=w) for w in job["windows"]]
    outputs = llm.generate(windows, scoring, use_tqdm=False)
    logprobs = [prompt_logprobs(o, w) for o, w in zip(outputs, job["windows"], strict=True)]

    generation = SamplingParams(max_tokens=job["max_tokens"], temperature=0.0, ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in job["prompts"]]
    llm.generate(prompts[:8], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), use_tqdm=False)
    rounds = []
    for _ in range(job["repeats"]):
        begin = time.perf_counter()
        outputs = llm.generate(prompts, generation, use_tqdm=False)
        seconds = time.perf_counter() - begin
        made = sum(len(o.outputs[0].token_ids) for o in outputs)
        read = sum(len(o.prompt_token_ids) for o in outputs)
        rounds.append({"seconds": seconds, "output_tokens": made, "prompt_tokens": read})
    median = statistics.median(r["seconds"] for r in rounds)
    made, read = rounds[0]["output_tokens"], rounds[0]["prompt_tokens"]
    result = {"load_seconds": loaded, "logprobs": logprobs, "rounds": rounds, "seconds": median,
              "output_tokens_per_second": made / median, "total_tokens_per_second": (made + read) / median,
              "kv_cache_blocks": kv_cache_blocks(llm), "gpu": gpu_name()}
    save_result(job, result)  # before the engine shuts down, should that hang or crash
    del llm, outputs
    release_vllm()
    return result


def kv_cache_blocks(llm: Any) -> int | None:
    """How many KV-cache blocks vLLM allotted (more for a model with fewer attentions), where it says."""
    engine = getattr(llm, "llm_engine", None)
    for owner in (getattr(getattr(engine, "vllm_config", None), "cache_config", None),
                  getattr(engine, "cache_config", None)):
        blocks = getattr(owner, "num_gpu_blocks", None)
        if blocks:
            return int(blocks)
    return None


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def release_vllm() -> None:
    """Free the engine before the process ends (the parent kills the process group afterwards anyway)."""
    import torch

    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:
        pass  # a release without the helper: the process ends next, which frees everything
    else:
        cleanup_dist_env_and_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
