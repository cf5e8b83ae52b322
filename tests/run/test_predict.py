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
