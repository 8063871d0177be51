"""llama.cpp's own converter on a twossp Nemotron-NAS export: a cross-check of the export (the schema
as llama.cpp reads it) and of twossp's GGUF writer (the same model written two ways).

SmolLM2-135M-Instruct is pruned with 2SSP (C4 calibration, as ``prune_smollm2.py``) and saved as
the portable Hugging Face checkpoint (Nemotron-NAS where blocks differ). llama.cpp's
``convert_hf_to_gguf.py`` (its ``DeciModel``, from the llama.cpp source that llama-cpp-python
vendors) converts that folder to an f32 GGUF; twossp's ``write_gguf`` writes the pruned model as an
f32 GGUF too. Both run in llama.cpp (llama-cpp-python) on the same WikiText-2 windows, against
twossp's own perplexity of the pruned model (PyTorch). One change to the converter, said in the
output: its DeciLM vocabulary code takes only Llama 3's (128,256 tokens) or a SentencePiece-style
vocabulary, so SmolLM2's byte-level BPE goes through the converter's generic GPT-2 path instead.

The converter's source: ``--llama-cpp DIR`` (a llama.cpp checkout, or ``vendor/llama.cpp`` of a
llama-cpp-python source tree), else the source distribution of the installed llama-cpp-python
version, downloaded from the package index with pip. Needs the reference data (``--data-dir`` or
``TWOSSP_BENCH_DATA``). Run it alone on the machine.

    .venv/bin/python benchmarks/llamacpp_converter.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from prune_smollm2 import window_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    window_arguments(p)
    p.add_argument("--llama-cpp", type=Path, default=None, help="llama.cpp source folder with convert_hf_to_gguf.py")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--keep", type=Path, default=None, help="keep the files in this folder")
    return p.parse_args(argv)


def converter_source(given: Path | None, scratch: Path) -> Path:
    """The llama.cpp folder holding ``convert_hf_to_gguf.py``: given, or from the sdist of the
    installed llama-cpp-python."""
    if given is not None:
        return given
    from importlib.metadata import version

    wanted = version("llama_cpp_python")
    subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={wanted}", "--no-binary", ":all:",
                    "--no-deps", "-d", str(scratch), "-q"], check=True)
    archive = next(scratch.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(scratch, filter="data")
    return next(scratch.glob("llama_cpp_python-*/vendor/llama.cpp"))


def convert(llama_cpp: Path, folder: Path, out: Path) -> None:
    """llama.cpp's converter on ``folder`` (f32), its vocabulary taken by the generic GPT-2 path."""
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    sys.path.insert(0, str(llama_cpp))
    import gguf
    from conversion.deci import DeciModel

    class Converted(DeciModel):
        model_arch = gguf.MODEL_ARCH.DECI

        def set_vocab(self) -> None:
            self._set_vocab_gpt2()

    model = Converted(folder, gguf.LlamaFileType.ALL_F32, out)
    model.write()


def main(argv: list[str] | None = None) -> int:
    from prune_smollm2 import Log, pruned_2ssp
    from twossp.checkpoint import save_pruned
    from twossp.serve.engine import Engine
    from twossp.serve.gguf import write_gguf

    args = parse_args(argv)
    log = Log()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="twossp-convert-"))
    folder.mkdir(parents=True, exist_ok=True)
    llama_cpp = converter_source(args.llama_cpp, folder)
    log(f"llama.cpp converter from {llama_cpp}")
    model, tokenizer, _, evaluation, own = pruned_2ssp(args, log, args.sparsity)
    export = folder / "export"
    saved = save_pruned(model, tokenizer, export)
    log(f"exported: {saved.layout}, {saved.blocks} blocks, {saved.attention_blocks} with attention")
    theirs, ours = folder / "converted.f32.gguf", folder / "twossp.f32.gguf"
    convert(llama_cpp, export, theirs)
    write_gguf(model, tokenizer, ours, "f32")
    print("\n| GGUF written by | size MiB | llama.cpp perplexity | vs twossp (PyTorch) |")
    print("|---|---:|---:|---:|")
    for name, path in (("llama.cpp's converter, from the Nemotron-NAS export", theirs),
                       ("twossp's GGUF writer, from the pruned model", ours)):
        with Engine(path, args.seq_len) as engine:
            measured = engine.perplexity(evaluation.numpy()).perplexity
        print(f"| {name} | {path.stat().st_size / 2**20:.1f} | {measured:.4f} | {measured / own - 1:+.4%} |")
    print(f"| (twossp, PyTorch fp32) | | {own:.4f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
