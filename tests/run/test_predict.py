"""Generation follows the run's `generation` block: the settings reach generate() and do what they say."""
from __future__ import annotations

import torch

from medpeft.config import config_from_dict
from medpeft.models import resolve_model
from medpeft.registry import TASKS
from medpeft.run.encode import encode_examples
from medpeft.run.kinds import KINDS, decoding
from medpeft.run.predict import generate_texts

from conftest import TINY_DATA
from helpers import load_for_kind


def repeated_trigrams(ids: list[int]) -> int:
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    return len(grams) - len(set(grams))


def generate_ids(generation: dict) -> list[list[int]]:
    cfg = config_from_dict({"task": "pubmed-conclusion", "model": "tiny-llama", "method": "untrained",
                            "data": dict(TINY_DATA, max_target_tokens=48), "generation": generation})
    task = TASKS[cfg.task].load(cfg.data)
    model, tokenizer, _ = load_for_kind(resolve_model("tiny-llama", online=False), "causal")
    rows, _ = encode_examples(task.splits["test"], tokenizer, KINDS["causal"], task.instruction, cfg.data, for_generation=True)
    texts = generate_texts(model, tokenizer, rows, True, decoding(cfg), 4, torch.device("cpu"))
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_no_repeat_ngram_size_stops_the_loops_of_a_random_model(assets_ready):
    looping = generate_ids({"no_repeat_ngram_size": 0})
    assert sum(map(repeated_trigrams, looping)) > 0  # a random decoder loops without it
    assert sum(map(repeated_trigrams, generate_ids({"no_repeat_ngram_size": 3}))) == 0


def test_decoding_takes_every_generation_setting():
    cfg = config_from_dict({"task": "pubmed-conclusion", "model": "tiny-llama", "method": "lora",
                            "data": {"max_target_tokens": 100},
                            "generation": {"num_beams": 4, "length_penalty": 2.0, "repetition_penalty": 1.2}})
    assert decoding(cfg) == {"max_new_tokens": 100, "num_beams": 4, "length_penalty": 2.0, "no_repeat_ngram_size": 3,
                             "repetition_penalty": 1.2}
    cfg.generation.max_new_tokens = 20
    assert decoding(cfg)["max_new_tokens"] == 20


def test_the_ngram_block_lets_a_decoder_copy_from_its_prompt(assets_ready):
    """A summary may repeat three words of its source; only repeats within the summary are blocked."""
    from transformers import LogitsProcessorList

    from medpeft.run.predict import generated_only

    prompt = torch.tensor([[5, 6, 7, 5, 6]])  # the prompt holds the trigram 5 6 7; 5 6 again at its end
    args = generated_only({"no_repeat_ngram_size": 3, "num_beams": 1}, prompt_length=5)
    assert args["no_repeat_ngram_size"] == 0 and isinstance(args["logits_processor"], LogitsProcessorList)
    scores = args["logits_processor"][0](prompt, torch.zeros(1, 10))
    assert scores[0, 7] == 0  # copying "5 6 7" from the prompt stays allowed
    generated = torch.cat([prompt, torch.tensor([[8, 9, 8, 9]])], dim=1)  # another 8 would repeat "8 9 8": a loop
    assert args["logits_processor"][0](generated, torch.zeros(1, 10))[0, 8] == float("-inf")
    assert generated_only({"no_repeat_ngram_size": 3}, prompt_length=0) == {"no_repeat_ngram_size": 3}  # seq2seq


# --- rows per generate() call -----------------------------------------------------------


def test_the_cache_estimate_counts_key_and_value_per_decoder_layer():
    from transformers import LlamaConfig, T5Config

    from medpeft.run.predict import cache_bytes_per_token

    smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    assert cache_bytes_per_token(smollm2) == 2 * 30 * 3 * 64 * 4  # grouped-query: 3 key/value heads of 64
    flan_t5_large = T5Config(d_model=1024, d_kv=64, num_heads=16, num_layers=24, num_decoder_layers=24)
    assert cache_bytes_per_token(flan_t5_large) == 2 * 24 * 16 * 64 * 4
    assert cache_bytes_per_token(smollm2, bytes_per_float=2) == cache_bytes_per_token(smollm2) // 2


def test_cpu_generation_takes_more_rows_while_their_cache_fits(monkeypatch):
    from types import SimpleNamespace

    from transformers import LlamaConfig

    from medpeft.run import predict

    model = SimpleNamespace(config=LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3))
    rows = [{"input_ids": [1] * n} for n in range(300, 400)]  # 100 prompts, the longest 399 tokens
    greedy, beams = {"max_new_tokens": 65, "num_beams": 1}, {"max_new_tokens": 65, "num_beams": 4}
    assert predict.generation_rows(model, rows, 8, greedy, "cpu") == predict.GENERATION_ROWS  # 46 kB x 464 tokens x 64 = 1.3 GiB
    per_row = 46080 * 464 * 4
    assert predict.generation_rows(model, rows, 8, beams, "cpu") == predict.GENERATION_BYTES // per_row  # 19 rows of 4 beams
    assert predict.generation_rows(model, rows[:5], 2, greedy, "cpu") == 5  # never more rows than there are
    assert predict.generation_rows(model, rows, 80, greedy, "cpu") == 80  # never fewer than asked for
    monkeypatch.setattr(predict, "GENERATION_BYTES", 1)
    assert predict.generation_rows(model, rows, 8, greedy, "cpu") == 8
    assert predict.generation_rows(model, rows, 8, greedy, "mps") == 8  # another accelerator keeps train.eval_batch_size


def test_gpu_generation_fills_the_card(monkeypatch):
    """On CUDA (its free memory pretended): as many rows as GPU_CACHE_SHARE of the free memory holds,
    up to GPU_GENERATION_ROWS; the cache counted in the model's dtype (a bf16 base: half of fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medpeft.run import predict

    config = LlamaConfig(hidden_size=576, intermediate_size=64, num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3,
                         vocab_size=32)
    model = LlamaForCausalLM(config)
    rows = [{"input_ids": [1] * 399} for _ in range(300)]
    greedy = {"max_new_tokens": 65, "num_beams": 1}
    per_row = 2 * 2 * 3 * 64 * 4 * 464  # fp32 cache (2 layers x k,v x 3 heads x 64) of the longest prompt plus its budget
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * per_row, 10**12))
    assert predict.generation_rows(model, rows, 8, greedy, "cuda") == int(predict.GPU_CACHE_SHARE * 100)  # 40 rows
    assert predict.generation_rows(model.to(torch.bfloat16), rows, 8, greedy, "cuda") == int(predict.GPU_CACHE_SHARE * 200)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**15, 10**15))
    assert predict.generation_rows(model, rows, 8, greedy, "cuda") == predict.GPU_GENERATION_ROWS
    assert predict.generation_rows(model, rows[:20], 8, greedy, "cuda") == 20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 10**15))
    assert predict.generation_rows(model, rows, 8, greedy, "cuda") == 8


def test_rows_per_call_leave_the_generated_texts_unchanged(assets_ready):
    """Prompts of different lengths, left-padded (decoder) or right-padded (encoder-decoder) to each call's
    longest: one per call or all in one call decode the same texts."""
    for model_name, kind in (("tiny-llama", "causal"), ("tiny-t5", "seq2seq")):
        cfg = config_from_dict({"task": "pubmed-conclusion", "model": model_name, "method": "untrained",
                                "data": dict(TINY_DATA, test_size=6, max_source_tokens=48, max_target_tokens=12)})
        task = TASKS[cfg.task].load(cfg.data)
        model, tokenizer, _ = load_for_kind(resolve_model(model_name, online=False), kind)
        rows, _ = encode_examples(task.splits["test"], tokenizer, KINDS[kind], task.instruction, cfg.data, for_generation=True)
        rows = [dict(r, input_ids=r["input_ids"][: 20 + 5 * i], attention_mask=r["attention_mask"][: 20 + 5 * i])
                for i, r in enumerate(rows)]  # six lengths, so every call pads
        one = generate_texts(model, tokenizer, rows, kind == "causal", decoding(cfg), 1, torch.device("cpu"))
        together = KINDS[kind].predict(model, tokenizer, rows, task.splits["test"], None, cfg, torch.device("cpu"))
        assert together == one and any(one), model_name
