"""Text generation backends behind one protocol: `generate(prompts, n, params)` returns `n` completions per prompt.

`TransformersGenerator` (`model.generate`, works on CPU) and `VLLMGenerator` (vLLM, imported lazily, tensor
parallel); `stapo_trl.evaluation.data_parallel.DataParallelGenerator` runs copies of one in worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .prompts import format_prompt, uses_chat_template
from .protocol import PAPER_MAX_NEW_TOKENS


@dataclass(frozen=True)
class Completion:
    """One sampled completion: its text (special tokens removed), its length in tokens (EOS included) and whether
    it was cut at the token limit."""

    text: str
    num_tokens: int
    truncated: bool = False


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one `generate` call. `temperature == 0` means greedy decoding.

    `seed`: the seed of the first prompt of the call; backends that seed per prompt use `seed + i` for prompt `i`.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    seed: int | None = None


@runtime_checkable
class Generator(Protocol):
    """A text generation backend: `n` completions for each prompt (a string, chat template already applied)."""

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]: ...


class TransformersGenerator:
    """`model.generate` backend: batched, sampling with exactly the given temperature/top-p (top-k, repetition
    penalty and the other filters of the model's generation config are switched off), works on CPU.

    Prompts are tokenized as TRL does in training: without special tokens when a chat template rendered them
    (the template holds them), with them otherwise. `max_batch_sequences` bounds the sequences of one `generate`
    call (prompts x n are split into chunks). The model is put in eval mode during generation and its previous
    mode restored afterwards; seeding forks the RNG, so the caller's random state is left untouched.
    """

    def __init__(self, model, tokenizer, *, max_batch_sequences: int = 64, chat_template_kwargs=None):
        if max_batch_sequences <= 0:
            raise ValueError(f"max_batch_sequences must be positive, got {max_batch_sequences}")
        if tokenizer.pad_token is None:  # as TRL does: padding with EOS is harmless with an attention mask
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_sequences = max_batch_sequences
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        trust_remote_code: bool = False,
        tokenizer=None,
        **kwargs,
    ) -> TransformersGenerator:
        """Load a model (and its tokenizer unless given). `dtype="auto"`: the checkpoint's dtype on GPU, float32 on
        CPU. `device=None`: all visible GPUs (`device_map="auto"`) when there is one, else the CPU."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(
                model_name_or_path, revision=revision, trust_remote_code=trust_remote_code
            )
        if device is None:
            device = "auto" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            torch_dtype = "auto" if device != "cpu" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path,
            revision=revision,
            dtype=torch_dtype,
            device_map=device,
            trust_remote_code=trust_remote_code,
        )
        return cls(model, tokenizer, **kwargs)

    def format_prompt(self, prompt) -> str:
        return format_prompt(prompt, self.tokenizer, self.chat_template_kwargs)

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if value is None:
                continue
            ids.update(value if isinstance(value, (list, tuple)) else [value])
        return ids

    def _generation_config(self, params: SamplingParams):
        from transformers import GenerationConfig

        stop_ids = sorted(self._stop_ids())
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = stop_ids[0] if stop_ids else 0
        greedy = params.temperature == 0
        settings = dict(
            do_sample=not greedy,
            max_new_tokens=params.max_new_tokens,
            num_beams=1,
            # Explicit neutral values: unset fields would be filled from the model's generation config (e.g. top_k=20
            # in Qwen3's) and from transformers' global defaults (top_k=50).
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=stop_ids or None,
        )
        if not greedy:
            settings.update(temperature=params.temperature, top_p=params.top_p)
        return GenerationConfig(**settings)

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        import torch

        if not prompts:
            return []
        expanded = [prompt for prompt in prompts for _ in range(n)]
        generation_config = self._generation_config(params)
        stop_ids = self._stop_ids()
        add_special_tokens = not uses_chat_template(self.tokenizer)
        device = _model_input_device(self.model)
        was_training = self.model.training
        completions: list[Completion] = []
        rng_devices = [device] if device.type == "cuda" else []
        try:
            self.model.eval()
            with torch.random.fork_rng(devices=rng_devices), torch.inference_mode():
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                for start in range(0, len(expanded), self.max_batch_sequences):
                    chunk = expanded[start : start + self.max_batch_sequences]
                    encoded = self.tokenizer(
                        chunk,
                        return_tensors="pt",
                        padding=True,
                        padding_side="left",
                        add_special_tokens=add_special_tokens,
                    ).to(device)
                    output = self.model.generate(
                        input_ids=encoded["input_ids"],
                        attention_mask=encoded["attention_mask"],
                        generation_config=generation_config,
                    )
                    new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
                    completions.extend(self._to_completion(row, stop_ids, params.max_new_tokens) for row in new_tokens)
        finally:
            self.model.train(was_training)
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _to_completion(self, token_ids: list[int], stop_ids: set[int], max_new_tokens: int) -> Completion:
        end = next((i for i, token in enumerate(token_ids) if token in stop_ids), None)
        if end is None:  # no EOS: the sequence ran to the token limit
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            return Completion(text=text, num_tokens=len(token_ids), truncated=len(token_ids) >= max_new_tokens)
        text = self.tokenizer.decode(token_ids[:end], skip_special_tokens=True)
        return Completion(text=text, num_tokens=end + 1, truncated=False)


def _model_input_device(model):
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


class VLLMGenerator:
    """vLLM backend (imported lazily; `pip install stapo-trl[vllm]`). Tensor parallel over `tensor_parallel_size`
    GPUs; for data parallelism wrap a factory of it in `DataParallelGenerator` (what `evaluate_model` does).

    Prompts are tokenized here, as in training (see `TransformersGenerator`), and passed as token ids. Each prompt
    gets its own seed (`params.seed + i`), so results do not depend on batching or on the data-parallel split.
    """

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        chat_template_kwargs=None,
        **llm_kwargs,
    ):
        from vllm import LLM

        self.llm = LLM(
            model=model,
            revision=revision,
            tokenizer_revision=revision,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            trust_remote_code=trust_remote_code,
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def format_prompt(self, prompt) -> str:
        return format_prompt(prompt, self.tokenizer, self.chat_template_kwargs)

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        if not prompts:
            return []
        add_special_tokens = not uses_chat_template(self.tokenizer)
        inputs = [
            {"prompt_token_ids": self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]}
            for prompt in prompts
        ]
        sampling = [
            VLLMSamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p if params.temperature > 0 else 1.0,
                max_tokens=params.max_new_tokens,
                seed=None if params.seed is None else params.seed + i,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(inputs, sampling, use_tqdm=False)
        return [
            [
                Completion(
                    text=sample.text,
                    num_tokens=len(sample.token_ids),
                    truncated=getattr(sample, "finish_reason", None) == "length",
                )
                for sample in output.outputs
            ]
            for output in outputs
        ]


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None
