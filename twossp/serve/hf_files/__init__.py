"""Files twossp ships inside a pruned Hugging Face checkpoint whose blocks differ: its configuration
and modelling code, referenced by ``auto_map`` in its config.json, so that
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` builds it with transformers
alone. They import transformers and torch only, never twossp: the folder must load where twossp is
not installed. twossp imports them from here to read such a folder without running its code."""

from __future__ import annotations

from pathlib import Path

#: the files, copied verbatim into every such checkpoint
FILES = ("configuration_twossp_nas.py", "modeling_twossp_nas.py")


def file_paths() -> list[Path]:
    here = Path(__file__).parent
    return [here / name for name in FILES]
