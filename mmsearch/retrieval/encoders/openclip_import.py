"""open_clip, imported with only what the model at hand needs.

`import open_clip` took 2.7 s on the AMD EPYC (warm page cache, after torch), of which ~2.1 s
went to what most models never use: transformers (0.9 s: Hugging Face text towers, CoCa's
caption generation), timm (0.2 s: timm image towers) and torch._dynamo (1.3 s: torchvision's
roi_align imports one function from it, timm's layers use it). For an architecture whose config
asks for neither (ViT-B-32, ViT-L-14, the ResNets: 55 of open_clip's 144 configs), open_clip is
imported with those two packages absent, which it allows for, and torch._dynamo as a stand-in
that imports the real module at its first use: 0.57 s; with weights from a local checkpoint,
without huggingface_hub too (0.25 s more: it downloads pretrained tags). A later model in the
same process that needs them gets them: `open_clip` reloads the modules that bound them as
missing. Only the command line does this (`LEAVE_OUT`); a program that imports mmsearch gets
open_clip whole.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: open_clip's optional packages, each with a name the first of its modules binds (None when the
#: package was absent) and the modules of open_clip that bind it when imported
OPTIONAL = {"transformers": ("transformers", ("open_clip.hf_model", "open_clip.coca_model")),
            "timm": ("timm", ("open_clip.timm_model",)),
            "huggingface_hub": ("hf_hub_download", ("open_clip.pretrained", "open_clip.push_to_hf_hub"))}


def needs(arch: str, local: bool = True) -> set[str]:
    """The packages of `OPTIONAL` a model of `arch` (an open_clip name, or a config file's path)
    needs, its weights a local checkpoint or not (a pretrained tag): all of them when its config
    cannot be read."""
    try:
        if arch.endswith(".json"):
            path = Path(arch).expanduser()
        else:
            spec = importlib.util.find_spec("open_clip")  # (finds it without importing it)
            path = Path(spec.origin).parent / "model_configs" / f"{arch}.json"  # type: ignore[union-attr, arg-type]
        cfg = json.loads(path.read_text())
        text, vision = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
    except (OSError, ValueError, AttributeError, TypeError):
        return set(OPTIONAL)
    wanted = set() if local else {"huggingface_hub"}
    if text.get("hf_model_name") or "multimodal_cfg" in cfg:  # (a Hugging Face tokenizer imports it when made)
        wanted.add("transformers")
    if vision.get("timm_model_name"):
        wanted |= {"timm", "huggingface_hub"}  # (timm binds the hub once, as it is imported)
    return wanted


#: whether open_clip may be imported without what the model leaves unused: set by the command
#: line (`cli.main`), whose process has no other user of open_clip. A program that imports
#: mmsearch gets open_clip whole: its own later `open_clip.create_model` of a timm or Hugging
#: Face model would find their packages missing, and its threads would meet the stand-ins
LEAVE_OUT = False


def open_clip(arch: str, local: bool = False) -> Any:
    """The open_clip module, ready for a model of `arch` with weights from a `local` checkpoint
    or not."""
    wanted = needs(arch, local) if LEAVE_OUT else set(OPTIONAL)
    if LEAVE_OUT and "open_clip" not in sys.modules:
        with _absent(set(OPTIONAL) - wanted), _dynamo_later():
            importlib.import_module("open_clip")
    module = importlib.import_module("open_clip")
    for name in wanted:
        binds, modules = OPTIONAL[name]
        bound = [sys.modules[m] for m in modules if m in sys.modules]
        if bound and getattr(bound[0], binds, None) is None and importlib.util.find_spec(name) is not None:
            for m in bound:  # (their classes, held elsewhere too, look the names up in these modules)
                importlib.reload(m)
    return module


class _Absent(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is left out for this model", name=fullname)
        return None


@contextmanager
def _absent(names: set[str]) -> Iterator[None]:
    """Importing any of `names` fails meanwhile (unless imported already)."""
    finder = _Absent(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


class _Later(types.ModuleType):
    """A stand-in for a module in `sys.modules`: the first attribute asked of it imports the real one."""

    def real(self) -> types.ModuleType:
        for name, module in list(sys.modules.items()):
            if isinstance(module, _Later):
                del sys.modules[name]
        return importlib.import_module(self.__name__)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # (what the import machinery probes)
            raise AttributeError(name)
        return getattr(self.real(), name)


@contextmanager
def _dynamo_later() -> Iterator[None]:
    """torch._dynamo as a stand-in meanwhile, unless imported already. torchvision's roi_align
    imports `is_compile_supported` from it to call in its forward: a function that imports the
    real one then."""
    if "torch._dynamo" in sys.modules:
        yield
        return
    package, utils = _Later("torch._dynamo"), _Later("torch._dynamo.utils")
    package.__path__ = []

    def is_compile_supported(*args: Any, **kwargs: Any) -> Any:
        return utils.real().is_compile_supported(*args, **kwargs)

    utils.is_compile_supported = is_compile_supported  # type: ignore[attr-defined]
    sys.modules |= {package.__name__: package, utils.__name__: utils}
    try:
        yield
    finally:
        for m in (package, utils):
            if sys.modules.get(m.__name__) is m:
                del sys.modules[m.__name__]
