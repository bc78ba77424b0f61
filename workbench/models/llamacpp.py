"""Convert an exported Hugging Face folder (`workbench.models.export_hf`) to a llama.cpp GGUF
model with llama.cpp's own converter, `convert_hf_to_gguf.py`.

llama.cpp's converter names a BPE pre-tokenizer from a hash of the token ids a tokenizer gives on
a fixed text; a tokenizer with a vocabulary of its own never matches a listed hash, and the
converter stops with "BPE pre-tokenizer was not recognized". Adding the hash to the list is what
llama.cpp's `convert_hf_to_gguf_update.py` does for a new model; here the converter runs in a
child process in which an unrecognized hash maps to the entry that `llamacpp_pre_tokenizer`
verified ("gpt-2": our pre-tokenizer is exactly GPT-2's byte-level one). The converter itself is
otherwise unchanged.

    gguf_file = convert_to_gguf("out/lm-hf", "out/lm.gguf", llama_cpp_dir="path/to/llama.cpp")

`llama_cpp_dir` is a llama.cpp source tree (for example the `vendor/llama.cpp` folder of the
llama-cpp-python sdist); without it, `$LLAMA_CPP_DIR` is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workbench.errors import InvalidInputError, NotFoundError, WorkbenchError
from workbench.models.tokenizer import llamacpp_pre_tokenizer, load_tokenizer_folder

CONVERTER = "convert_hf_to_gguf.py"
OUT_TYPES = ("f32", "f16", "bf16", "q8_0")

# Runs in the child process: argv = [-c, converter path, pre-tokenizer name, converter args...].
_DRIVER = """
import runpy, sys
from pathlib import Path
script, pre = Path(sys.argv[1]), sys.argv[2]
sys.argv = [str(script), *sys.argv[3:]]
sys.path.insert(0, str(script.parent))
import conversion.base as base
recognized = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return recognized(self, tokenizer)
    except NotImplementedError:
        base.logger.info("pre-tokenizer hash registered by the workbench as %r", pre)
        return pre
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
runpy.run_path(str(script), run_name="__main__")
"""


def find_converter(llama_cpp_dir: str | os.PathLike | None = None) -> Path:
    """The path of `convert_hf_to_gguf.py` in a llama.cpp source tree (or `$LLAMA_CPP_DIR`)."""
    root = llama_cpp_dir or os.environ.get("LLAMA_CPP_DIR")
    if not root:
        raise NotFoundError("no llama.cpp source tree given: pass --llama-cpp DIR or set "
                            "LLAMA_CPP_DIR (the vendor/llama.cpp folder of the llama-cpp-python "
                            "sdist has the converter; see docs/usage.md)")
    script = Path(root).expanduser() / CONVERTER
    if not script.is_file() or not (script.parent / "conversion").is_dir():
        raise NotFoundError(f"{script} is missing: {root} is not a llama.cpp source tree with "
                            "its converter")
    return script


def convert_to_gguf(hf_dir: str | os.PathLike, out_file: str | os.PathLike,
                    llama_cpp_dir: str | os.PathLike | None = None, outtype: str = "f32",
                    overwrite: bool = False, timeout_s: float = 900) -> Path:
    """Convert the transformers folder `hf_dir` to the GGUF file `out_file` (atomic)."""
    if outtype not in OUT_TYPES:
        raise InvalidInputError(f"unknown GGUF type {outtype!r}; choose one of {list(OUT_TYPES)}")
    hf_dir, out = Path(hf_dir).expanduser(), Path(out_file).expanduser()
    if not (hf_dir / "config.json").is_file():
        raise NotFoundError(f"{hf_dir} is not a transformers folder (no config.json); make one "
                            "with `workbench lm export-hf`")
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{out} already exists; pick another --out or pass --overwrite")
    script = find_converter(llama_cpp_dir)
    pre = llamacpp_pre_tokenizer(load_tokenizer_folder(hf_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    cmd = [sys.executable, "-c", _DRIVER, str(script), pre, str(hf_dir), "--outfile", str(tmp),
           "--outtype", outtype]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    try:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise WorkbenchError(f"llama.cpp's converter ran past {timeout_s:.0f} s on "
                                 f"{hf_dir}") from exc
        if done.returncode != 0 or not tmp.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise WorkbenchError(f"llama.cpp's converter failed on {hf_dir}:\n{tail}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
