"""Every registered method on every model kind, built the way `train.run_experiment` builds it.

Parametrized over the METHODS registry, so a newly registered method is tested at once: it must
train exactly the parameters it claims (none of the frozen base changes), and a sequence
classifier's new head must be trained and saved with the adapter.
"""
from __future__ import annotations

import pytest
import torch

from medpeft.run.encode import encode_examples
from medpeft.run.kinds import KINDS
from medpeft.errors import ConfigError
from medpeft.methods import SET_BY_MEDPEFT, build_peft_config, output_prefix_tokens, validate_method_args
from medpeft.models import resolve_model
from medpeft.run.measure import count_parameters
from medpeft.registry import METHODS
from medpeft.tasks import RCT_LABELS

from helpers import load_for_kind
from conftest import KIND_SETUPS, TINY_DATA

TRAINED_METHODS = sorted(name for name, spec in METHODS.items() if spec.trains)
INSTRUCTION = "Summarise this medical text."
LABELS = list(RCT_LABELS)  # 5 classes
EXAMPLES = [
    {"id": "a", "text": "Patients received aspirin daily for twelve weeks.", "target": "METHODS"},
    {"id": "b", "text": "Mortality fell by a third in the treated group.", "target": "RESULTS"},
    {"id": "c", "text": "Aspirin is safe and effective.", "target": "CONCLUSIONS"},
]
# Per head kind: the label set and examples in that kind's format.
HEAD_DATA = {
    "seq_cls": (LABELS, EXAMPLES),
    "multilabel": (LABELS, [dict(ex, target=[ex["target"], "RESULTS"]) for ex in EXAMPLES]),
    "token_cls": (["O", "B-DRUG", "I-DRUG"], [
        {"id": "a", "text": ["Patients", "received", "aspirin", "daily"], "target": ["O", "O", "B-DRUG", "O"]},
        {"id": "b", "text": ["low", "dose", "acetyl", "salicylic", "acid", "helps"], "target": ["O", "O", "B-DRUG", "I-DRUG", "I-DRUG", "O"]},
    ]),
}


def labels_for(kind: str):
    return HEAD_DATA[kind][0] if kind in HEAD_DATA else None


def build(method: str, kind: str, method_args=None):
    """Model (with the method applied), tokenizer, and the peft config, as run_experiment does."""
    from peft import get_peft_model

    model_name, _ = KIND_SETUPS[kind]
    path = resolve_model(model_name, online=False)
    torch.manual_seed(0)
    model, tokenizer, new_modules = load_for_kind(path, kind, labels_for(kind))
    new_modules = new_modules if KINDS[kind].new_head else []
    config = build_peft_config(method, KINDS[kind].peft_task_type, method_args or {}, model_path=path, instruction=INSTRUCTION,
                               new_modules=new_modules)
    if config is not None:
        model = get_peft_model(model, config)
    return model, tokenizer, config


def make_batch(tokenizer, kind: str, config=None) -> dict:
    data_cfg = type("Data", (), TINY_DATA)()
    examples = HEAD_DATA[kind][1] if kind in HEAD_DATA else EXAMPLES
    rows, _ = encode_examples(examples, tokenizer, KINDS[kind], INSTRUCTION, data_cfg, labels_for(kind))
    # soft prompts shift the token labels (methods.output_prefix_tokens)
    return KINDS[kind].collator(tokenizer, output_prefix_tokens(config))(rows)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def train_steps(model, batch: dict, steps: int = 2) -> list[float]:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module", autouse=True)
def _assets(assets_ready):
    pass


def test_methods_and_kinds_are_registered():
    assert {"untrained", "full", "lora", "prompt_tuning"} <= set(METHODS)
    assert set(KIND_SETUPS) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", TRAINED_METHODS)
def test_method_trains_exactly_its_parameters(method, kind, tmp_path):
    model, tokenizer, config = build(method, kind)
    counts = count_parameters(model)
    if METHODS[method].peft_class is None:
        assert config is None
        assert counts["trainable_params"] == counts["total_params"] > 0
    else:
        assert config is not None and type(config).__name__ == METHODS[method].peft_class
        assert 0 < counts["trainable_params"] < 0.10 * counts["total_params"], counts

    before = snapshot(model)
    losses = train_steps(model, make_batch(tokenizer, kind, config))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    frozen_changed = [n for n, p in after.items() if not p.requires_grad and not torch.equal(p, before[n])]
    trainable_unchanged = [n for n, p in after.items() if p.requires_grad and torch.equal(p, before[n])]
    assert not frozen_changed, f"{method}/{kind}: frozen parameters changed: {frozen_changed[:5]}"
    assert not trainable_unchanged, f"{method}/{kind}: trainable parameters never moved: {trainable_unchanged[:5]}"
    if kind in HEAD_DATA and config is not None:
        check_head_is_trained_and_saved(model, config, tmp_path)


def check_head_is_trained_and_saved(model, config, folder):
    """The new classifier must be in modules_to_save, trainable, and in the saved adapter as trained."""
    from safetensors.torch import load_file

    assert "classifier" in (config.modules_to_save or [])
    head = {n: p for n, p in model.named_parameters() if "classifier" in n and "modules_to_save" in n}
    assert {n.rsplit(".", 1)[-1] for n in head} == {"weight", "bias"}, sorted(head)
    assert all(p.requires_grad for p in head.values())
    model.save_pretrained(folder)
    saved = {k: v for k, v in load_file(folder / "adapter_model.safetensors").items() if "classifier" in k}
    assert {k.rsplit(".", 1)[-1] for k in saved} == {"weight", "bias"}, sorted(saved)
    for name, param in head.items():
        suffix = name.rsplit(".", 1)[-1]
        assert any(k.endswith(suffix) and torch.equal(v, param.detach()) for k, v in saved.items()), name


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("kind", KINDS)
def test_soft_prompts_count_only_what_trains(kind, method):
    """peft's seq2seq default allocates prompts for the decoder too, which never get a gradient
    (the 'virtual tokens counted twice' pitfall); medpeft prompts the encoder only."""
    model, tokenizer, config = build(method, kind, {"num_virtual_tokens": 7})
    d_model = model.base_model.config.hidden_size if kind != "seq2seq" else model.base_model.config.d_model
    assert config.num_transformer_submodules == 1
    prompt = model.prompt_encoder["default"].embedding.weight
    assert prompt.shape == (7, d_model)
    if method == "prompt_tuning":
        n = len(labels_for(kind) or [])
        head = n * d_model + n if kind in HEAD_DATA else 0  # the new classifier is trained too
        assert count_parameters(model)["trainable_params"] == 7 * d_model + head
    model.train()
    model(**make_batch(tokenizer, kind, config)).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads), "a trainable tensor got no gradient"


def test_prompt_tuning_starts_from_the_instruction_text():
    model, tokenizer, _ = build("prompt_tuning", "causal", {"num_virtual_tokens": 4})
    ids = tokenizer(INSTRUCTION)["input_ids"][:4]  # peft tokenizes with special tokens
    words = model.get_input_embeddings().weight[torch.tensor(ids)]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight.detach(), words.detach())


def test_lora_targets_follow_method_args():
    model, _, _ = build("lora", "causal", {"r": 2, "target_modules": ["q_proj", "v_proj", "o_proj"]})
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(names) == 2 * 3  # 2 layers x 3 projections
    assert all(p.shape[0] == 2 for n, p in model.named_parameters() if "lora_A" in n)


def test_unknown_peft_task_type_is_an_error():
    with pytest.raises(ValueError, match="peft task type"):
        build_peft_config("lora", "vision", {}, model_path="x", instruction="", new_modules=[])


def test_new_modules_missing_from_the_checkpoint_are_trained_and_saved(tmp_path):
    """A checkpoint without a pooler (like MiniLM): pooler and classifier are new, so both must be saved."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoTokenizer, BertConfig, BertModel

    source = resolve_model("tiny-bert", online=False)
    folder = tmp_path / "no-pooler"
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(source), add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)

    torch.manual_seed(1)
    model, tokenizer, new_modules = load_for_kind(str(folder), "seq_cls", LABELS)
    assert new_modules == ["bert.pooler.dense", "classifier"]
    config = build_peft_config("lora", "SEQ_CLS", {}, model_path=str(folder), instruction="", new_modules=new_modules)
    assert {"bert.pooler.dense", "classifier"} <= set(config.modules_to_save)
    model = get_peft_model(model, config)
    pooler = [p for n, p in model.named_parameters() if "pooler" in n and "modules_to_save" in n]
    assert pooler and all(p.requires_grad for p in pooler)
    batch = make_batch(tokenizer, "seq_cls")
    train_steps(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    model.eval()
    with torch.no_grad():
        expected = model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    torch.manual_seed(2)  # a different random pooler and head in the fresh base
    base, _, _ = load_for_kind(str(folder), "seq_cls", LABELS)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_model_sizes_read_each_familys_names():
    """BERT, Llama (grouped-query attention), T5 and BART (their own names, a decoder) and a multimodal
    text_config."""
    from types import SimpleNamespace

    from transformers import BartConfig, BertConfig, LlamaConfig, T5Config

    from medpeft.models import ModelSizes, model_sizes

    minilm = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    assert model_sizes(minilm) == ModelSizes(384, 1536, 6, 0, 12, 12, 32)
    smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          intermediate_size=1536)
    assert model_sizes(smollm2) == ModelSizes(576, 1536, 30, 0, 9, 3, 64)
    t5 = T5Config(d_model=512, d_kv=64, d_ff=1024, num_heads=6, num_layers=8, num_decoder_layers=4)
    assert model_sizes(t5) == ModelSizes(512, 1024, 8, 4, 6, 6, 64)
    bart = BartConfig(d_model=256, encoder_layers=6, decoder_layers=3, encoder_attention_heads=8,
                      decoder_attention_heads=8, encoder_ffn_dim=1024, decoder_ffn_dim=1024)
    assert model_sizes(bart) == ModelSizes(256, 1024, 6, 3, 8, 8, 32)
    assert model_sizes(SimpleNamespace(text_config=smollm2)) == model_sizes(smollm2)


def test_adapted_from_names_the_base_of_a_pretrained_folder(tmp_path):
    from medpeft.models import PRETRAIN_RECORD, adapted_from

    (tmp_path / PRETRAIN_RECORD).write_text('{"base_model": "minilm-l6"}')
    assert adapted_from(str(tmp_path)) == "minilm-l6"
    (tmp_path / PRETRAIN_RECORD).write_text("{not json")
    assert adapted_from(str(tmp_path)) is None  # a damaged record: no comparison, no crash
    assert adapted_from(str(tmp_path / "missing")) is None and adapted_from(None) is None


# --- method_args values, checked at plan time from the peft config's field types (issue 27) ---------------

PEFT_METHODS = sorted(name for name, spec in METHODS.items() if spec.peft_class)


def size_fields(method: str) -> list[str]:
    """The peft config fields typed int (or int | None): sizes and counts, which must be >= 1."""
    import dataclasses
    import typing

    import peft

    cls = getattr(peft, METHODS[method].peft_class)
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.name not in SET_BY_MEDPEFT
            and (hints[f.name] is int or set(typing.get_args(hints[f.name])) == {int, type(None)})]


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_every_methods_defaults_pass_the_plan_time_check(method):
    validate_method_args(method, {})


@pytest.mark.parametrize("method", PEFT_METHODS)
@pytest.mark.parametrize("value", [0, -4, "sixteen", 2.5, True])
def test_a_size_or_count_that_is_no_positive_int_is_refused(method, value):
    fields = size_fields(method) or pytest.skip(f"{method}'s peft config has no int field")
    for key in fields:
        with pytest.raises(ConfigError, match=rf"^method_args.{key} for {method} \(\w+\) must be an int >= 1"):
            validate_method_args(method, {key: value})


@pytest.mark.parametrize("method, args, needle", [
    ("lora", {"lora_dropout": 1.5}, "method_args.lora_dropout for lora (LoraConfig) must be a probability in [0, 1), got 1.5"),
    ("p_tuning", {"encoder_dropout": -0.1}, "method_args.encoder_dropout for p_tuning (PromptEncoderConfig) must be a probability"),
    ("lora", {"lora_dropout": float("nan")}, "method_args.lora_dropout for lora (LoraConfig) must be a finite number, got nan"),
    ("lora", {"lora_dropout": "5e-2"}, "must be float, got '5e-2' (str); YAML reads an exponent without a dot as text"),
    ("lora", {"bias": "bogus"}, "method_args.bias for lora (LoraConfig) must be one of 'none', 'all', 'lora_only', got 'bogus'"),
    ("lora", {"use_dora": "yes"}, "method_args.use_dora for lora (LoraConfig) must be bool, got 'yes'"),
    ("ia3", {"target_modules": 3}, "method_args.target_modules for ia3 (IA3Config) must be list[str] | str | null, got 3"),
    ("lora", {"layers_to_transform": [-1]}, "method_args.layers_to_transform for lora (LoraConfig) must be list[int] | int | null (ints >= 0)"),
    ("lora", {"layers_pattern": "layer"}, "method_args for lora (LoraConfig): When `layers_pattern` is specified"),  # peft's own check
    ("dora", {"lora_bias": True}, "method_args for dora (LoraConfig): The argument lora_bias=True is not supported for DoRA"),
])
def test_bad_method_args_values_name_the_key_and_what_it_takes(method, args, needle):
    with pytest.raises(ConfigError) as err:
        validate_method_args(method, args)
    assert needle in str(err.value)


@pytest.mark.parametrize("method, args", [
    ("lora", {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["query", "value"]}),
    ("lora", {"target_modules": ["query"], "layers_to_transform": 0, "layers_pattern": "layer"}),  # layer 0 is an index
    ("lora", {"init_lora_weights": "pissa_niter_16", "rank_pattern": {"query": 8}, "bias": "lora_only"}),
    ("lora", {"layer_replication": [[0, 2], [1, 2]]}),
    ("prompt_tuning", {"num_virtual_tokens": 8, "prompt_tuning_init": "RANDOM"}),
    ("p_tuning", {"encoder_hidden_size": 64, "encoder_dropout": 0.1, "encoder_reparameterization_type": "LSTM"}),
    ("prefix_tuning", {"num_virtual_tokens": 10, "prefix_projection": True}),
])
def test_valid_method_args_values_pass(method, args):
    validate_method_args(method, args)


def test_every_method_has_one_role():
    """The baseline, full fine-tuning and the peft methods are told apart by role, not by name."""
    from medpeft.methods import BASELINE, FULL, Role, method_role

    roles = {name: spec.role for name, spec in METHODS.items()}
    assert [n for n, r in roles.items() if r is Role.BASELINE] == [BASELINE] == ["untrained"]
    assert [n for n, r in roles.items() if r is Role.FULL] == [FULL] == ["full"]
    assert all(METHODS[n].peft_class is not None for n, r in roles.items() if r is Role.PEFT)
    assert method_role("untrained") is Role.BASELINE and method_role("full") is Role.FULL
    assert method_role("a-method-since-removed") is Role.PEFT
