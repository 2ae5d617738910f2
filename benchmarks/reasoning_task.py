"""A miniature math-reasoning task where the paper's S2T threshold (tau_p = 0.002) has tokens to act on.

The addition demo (`stapo_trl.demo`) has a 26-token vocabulary and 5-6-token completions: no token is ever
improbable enough, so at tau_p = 0.002 STAPO silences nothing there. This task keeps what makes spurious tokens
possible in the paper's setting, at a size that trains on a CPU:

- **word problems with a reasoning chain.** "Mia has 12 red apples. She buys 7 more and then gives 5 to Tom. How many
  red apples does Mia have now?" answered by a chain of 30-60 tokens ("Mia starts with 12 red apples. After buying 7
  more she has 12 + 7 = 19. ... The answer is \\boxed{14}."). Each step has several phrasings, synonyms and optional
  filler sentences, drawn at random; the reward (`boxed_reward`) reads only the last `\\boxed{}` answer, so the
  wording of a correct chain never changes its reward, and an odd word inside it inherits the full advantage;
- **a long-tail vocabulary.** A byte-level BPE tokenizer (`build_reasoning_tokenizer`, ~2k tokens) trained on the
  task's own text: names, objects, adjectives and verbs from lists of dozens each, numbers, filler. Most tokens are
  irrelevant at any given position, so a confident position leaves p < 0.002 on nearly all alternatives;
- **a warm start** (`warm_start`): short supervised fine-tuning on generated chains with TRL's `SFTTrainer`, stopped
  at a target held-out greedy accuracy, so that the policy is peaked (it copies names and objects and follows the
  template) but not degenerate (the phrasing choices keep their entropy, the arithmetic is often wrong).

`python benchmarks/miniature_reasoning.py` runs the four methods on it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, TrainerCallback

from stapo_trl.rewards import extract_boxed_answer
from stapo_trl.tiny import BOXED_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, as_pretrained_tokenizer, build_tiny_qwen3

MAX_COMPLETION_LENGTH = 96
VOCAB_SIZE = 2048
# ~0.5M parameters with the ~1k-token vocabulary (tied embeddings): smaller than the demo's model, so that a few
# hundred RL updates of 30-60-token completions fit in minutes on one shared CPU thread.
MODEL_KWARGS = dict(
    hidden_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=384,
    max_position_embeddings=192,
)

NAMES = (
    "Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Lily", "Noah", "Emma", "Liam", "Olivia", "Ethan",
    "Sophia", "Lucas", "Grace", "Henry", "Chloe", "Jack", "Ella", "Owen", "Ruby", "Finn", "Nora", "Hugo", "Clara",
    "Felix", "Alice", "Oscar", "Maya", "Theo", "Hazel", "Jonas", "Iris", "Milo", "Luna", "Arthur", "Rosa", "Victor",
    "Paula", "Dmitri", "Keiko", "Amara", "Tariq", "Ingrid", "Rafael", "Yusuf", "Selma", "Bruno", "Beatrix", "Cyrus",
    "Delphine", "Esteban", "Fatima", "Gustav", "Helga", "Ignatius", "Jasmine", "Kwame", "Lorenzo", "Magnus", "Nadia",
    "Orla", "Priya", "Quentin", "Rowena", "Stellan", "Tobias", "Ulrike", "Valentina", "Wendell", "Xavier", "Yolanda",
    "Zachary",
)
OBJECTS = (
    "apples", "pencils", "marbles", "stickers", "books", "cookies", "coins", "stamps", "shells", "cards", "candles",
    "buttons", "ribbons", "balloons", "crayons", "tickets", "cupcakes", "flowers", "pebbles", "feathers", "muffins",
    "oranges", "lemons", "peaches", "plums", "acorns", "bottles", "spoons", "rings", "beads", "kites", "boxes",
    "baskets", "toys", "puzzles", "magnets", "notebooks", "erasers", "bracelets", "candies", "carrots", "tomatoes",
    "potatoes", "onions", "mangoes", "cherries", "grapes", "walnuts", "pretzels", "sandwiches", "umbrellas",
    "lanterns", "thimbles", "harmonicas", "figurines", "dumplings", "pinecones", "horseshoes", "teacups", "whistles",
    "scarves", "mittens", "goblets", "paintbrushes", "marshmallows", "pineapples", "avocados", "dominoes", "trophies",
    "envelopes",
)
ADJECTIVES = (
    "red", "blue", "green", "yellow", "small", "large", "shiny", "old", "new", "striped", "wooden", "golden",
    "purple", "tiny", "round", "fresh", "silver", "spotted", "plastic", "paper", "crimson", "turquoise", "velvet",
    "enormous", "polished", "crooked", "fragrant", "glittering", "ancient", "chipped",
)
GAIN_VERBS = (  # (present, past participle-ish gerund) used as "buys 7 more" / "after buying 7 more"
    ("buys", "buying"), ("finds", "finding"), ("gets", "getting"), ("receives", "receiving"),
    ("collects", "collecting"), ("wins", "winning"), ("picks up", "picking up"), ("makes", "making"),
)
LOSS_VERBS = (  # "gives 5 to Tom" / "after giving 5 to Tom"; "loses 5" / "after losing 5"
    ("gives", "giving", True), ("lends", "lending", True), ("sends", "sending", True), ("sells", "selling", True),
    ("loses", "losing", False), ("uses", "using", False), ("breaks", "breaking", False), ("drops", "dropping", False),
)
PRONOUNS = ("She", "He")
QUESTION_OPENERS = ("How many", "Exactly how many", "In total, how many")
STARTS = ("{name} starts with {a} {obj}.", "At first {name} has {a} {obj}.", "We begin with {a} {obj}.",
          "Initially there are {a} {obj}.", "{name} has {a} {obj} at the start.")
GAIN_STEPS = ("After {gain_ing} {b} more, {name} has {a} + {b} = {s}.", "Adding the {b}, we get {a} + {b} = {s}.",
              "{a} plus {b} equals {s}.", "Then {a} + {b} = {s} {obj}.", "So now there are {a} + {b} = {s}.")
LOSS_STEPS = ("Then {name} {loss}, so {s} - {c} = {t}.", "Taking away {c} leaves {s} - {c} = {t}.",
              "{s} minus {c} is {t}.", "After {loss_ing}, {s} - {c} = {t} {obj} remain.",
              "Subtracting {c} gives {s} - {c} = {t}.")
FILLERS = ("Let me think.", "Okay.", "Good.", "Let us check this carefully.", "Step by step.", "Right.",
           "This is simple.", "Now the second part.", "Hmm, let me see.", "That makes sense.")
ENDINGS = ("The answer is \\boxed{{{t}}}.", "So the final answer is \\boxed{{{t}}}.", "Therefore \\boxed{{{t}}}.",
           "{name} has \\boxed{{{t}}} {obj} now.", "In the end: \\boxed{{{t}}}.")


# --------------------------------------------------------------------------------------------------------------
# Problems and chains
# --------------------------------------------------------------------------------------------------------------


def _problem_space(max_start: int = 20, max_gain: int = 10) -> list[tuple[int, int, int]]:
    """Every (a, b, c) with 2 <= a <= max_start, 1 <= b <= max_gain, 1 <= c < a + b (so the answer is >= 1)."""
    return [(a, b, c) for a in range(2, max_start + 1) for b in range(1, max_gain + 1) for c in range(1, a + b)]


def make_problem(a: int, b: int, c: int, rng: random.Random) -> dict[str, Any]:
    """One word problem: the prompt text, its answer a + b - c and the words a chain refers to."""
    name, other = rng.sample(NAMES, 2)
    obj = f"{rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)}"
    gain, gain_ing = rng.choice(GAIN_VERBS)
    loss, loss_ing, to_someone = rng.choice(LOSS_VERBS)
    target = f" to {other}" if to_someone else ""
    loss_text, loss_ing_text = f"{loss} {c}{target}", f"{loss_ing} {c}{target}"
    pronoun = rng.choice(PRONOUNS)
    question = (
        f"{name} has {a} {obj}. {pronoun} {gain} {b} more and then {loss_text}. "
        f"{rng.choice(QUESTION_OPENERS)} {obj} does {name} have now?"
    )
    words = dict(name=name, obj=obj, gain_ing=gain_ing, loss=loss_text, loss_ing=loss_ing_text)
    return {"prompt": question, "answer": str(a + b - c), "a": a, "b": b, "c": c, "words": words}


def reasoning_chain(problem: dict[str, Any], rng: random.Random) -> str:
    """A correct chain for `problem` in a random phrasing (step templates, synonyms, optional filler)."""
    a, b, c = problem["a"], problem["b"], problem["c"]
    values = dict(problem["words"], a=a, b=b, c=c, s=a + b, t=a + b - c)
    sentences = [rng.choice(STARTS), rng.choice(GAIN_STEPS), rng.choice(LOSS_STEPS), rng.choice(ENDINGS)]
    for slot in sorted(rng.sample(range(len(sentences)), k=rng.randint(0, 2)), reverse=True):
        sentences.insert(slot, rng.choice(FILLERS))
    return " ".join(sentence.format(**values) for sentence in sentences)


def split_problems(seed: int = 0, num_train: int = 2400, num_eval: int = 200):
    """Disjoint train / held-out problems: no (a, b, c) triple of the held-out set appears in training."""
    rng = random.Random(seed)
    triples = _problem_space()
    rng.shuffle(triples)
    if num_train + num_eval > len(triples):
        raise ValueError(f"num_train + num_eval must be at most {len(triples)}, got {num_train + num_eval}.")
    held_out = [make_problem(*t, rng) for t in triples[:num_eval]]
    train = [make_problem(*t, rng) for t in triples[num_eval : num_eval + num_train]]
    return train, held_out


def to_dataset(problems: Sequence[dict[str, Any]]) -> Dataset:
    """`prompt` (plain string) and `answer` columns, what `STAPOTrainer` and the reward read."""
    return Dataset.from_dict({"prompt": [p["prompt"] for p in problems], "answer": [p["answer"] for p in problems]})


def task_corpus(seed: int = 0, num_problems: int = 2500) -> list[str]:
    """Text the tokenizer is trained on: prompts and chains of problems drawn from the whole problem space."""
    rng = random.Random(10_000 + seed)
    triples = rng.sample(_problem_space(), num_problems)
    texts = []
    for triple in triples:
        problem = make_problem(*triple, rng)
        texts += [problem["prompt"], reasoning_chain(problem, rng), reasoning_chain(problem, rng)]
    return texts


# --------------------------------------------------------------------------------------------------------------
# Tokenizer, model, reward, accuracy
# --------------------------------------------------------------------------------------------------------------


def build_reasoning_tokenizer(corpus: Sequence[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of (up to) `vocab_size` tokens trained on `corpus`; `\\boxed{` is one token.

    The 256 byte tokens are all in the vocabulary (as in a real LLM's), whether the task uses them or not.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN, UNK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_tokens([BOXED_TOKEN])
    return as_pretrained_tokenizer(tokenizer)


def build_reasoning_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    """A randomly initialised Qwen3-architecture model for `tokenizer` (float32, tied embeddings)."""
    return build_tiny_qwen3(tokenizer, seed=seed, **MODEL_KWARGS)


def is_correct(completion: str, answer: str) -> bool:
    """Whether the last `\\boxed{}` of `completion` holds the integer `answer`; nothing else of the text counts."""
    boxed = extract_boxed_answer(completion)
    if boxed is None:
        return False
    try:
        return int(boxed.strip()) == int(answer)
    except ValueError:
        return False


def boxed_reward(completions: Sequence[str], answer: Sequence[str], **kwargs) -> list[float]:
    """The paper's binary reward: +1 when the boxed answer is right, -1 otherwise (no box, wrong number)."""
    return [1.0 if is_correct(c, a) else -1.0 for c, a in zip(completions, answer, strict=True)]


@torch.no_grad()
def greedy_accuracy(model, tokenizer, problems: Sequence[dict[str, Any]], batch_size: int = 100) -> float:
    """Fraction of `problems` whose greedy completion (at most MAX_COMPLETION_LENGTH tokens) boxes the answer."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            batch = tokenizer([p["prompt"] for p in chunk], return_tensors="pt", padding=True)
            output = model.generate(
                **batch, max_new_tokens=MAX_COMPLETION_LENGTH, do_sample=False, temperature=None, top_p=None,
                top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += sum(is_correct(t, p["answer"]) for t, p in zip(texts, chunk, strict=True))
    finally:
        model.train(was_training)
    return correct / max(len(problems), 1)


# --------------------------------------------------------------------------------------------------------------
# Warm start
# --------------------------------------------------------------------------------------------------------------


class _StopAtAccuracy(TrainerCallback):
    """Evaluate held-out greedy accuracy every `every` steps; stop training once it reaches `target`."""

    def __init__(self, model, tokenizer, problems, target: float, every: int):
        self.model, self.tokenizer, self.problems = model, tokenizer, problems
        self.target, self.every = target, every
        self.history: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            accuracy = greedy_accuracy(self.model, self.tokenizer, self.problems)
            self.history.append((state.global_step, accuracy))
            print(f"warm start: step {state.global_step}, held-out greedy accuracy {accuracy:.3f}", flush=True)
            if accuracy >= self.target:
                control.should_training_stop = True


def warm_start(
    model,
    tokenizer,
    train: Sequence[dict[str, Any]],
    held_out: Sequence[dict[str, Any]],
    output_dir: str,
    seed: int = 0,
    target_accuracy: float = 0.3,
    max_steps: int = 1500,
    eval_every: int = 50,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Supervised fine-tuning (TRL `SFTTrainer`, loss on the completion only) on one random chain per problem.

    Stops when held-out greedy accuracy, checked every `eval_every` steps, reaches `target_accuracy`, or after
    `max_steps`. Returns the steps, the accuracy history, the last loss and the time taken.
    """
    from trl import SFTConfig, SFTTrainer

    rng = random.Random(20_000 + seed)
    dataset = Dataset.from_dict(
        {"prompt": [p["prompt"] for p in train], "completion": [" " + reasoning_chain(p, rng) for p in train]}
    )
    stopper = _StopAtAccuracy(model, tokenizer, list(held_out), target_accuracy, eval_every)
    config = SFTConfig(
        output_dir=output_dir, max_steps=max_steps, learning_rate=learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=batch_size, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
        logging_steps=eval_every, disable_tqdm=True, seed=seed, max_length=None,
        activation_checkpointing=True,  # TRL's default, under transformers 5.25's name (the old one warns)
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[stopper])
    start = time.perf_counter()
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return {
        "steps": trainer.state.global_step,
        "accuracy_history": stopper.history,
        "reached_target": bool(stopper.history) and stopper.history[-1][1] >= target_accuracy,
        "loss": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
