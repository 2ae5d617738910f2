"""Offline checks of the launch files: accelerate configs, training recipes and the Slurm script.

Nothing here needs a GPU or the network. The accelerate configs are loaded with accelerate's own loader and
turned into the environment `accelerate launch` would give the training processes; the recipes are parsed the
way train.py parses them (TrlParser over STAPOScriptArguments, STAPOConfig and ModelConfig), and their batch
arithmetic is checked for the 8 processes they are written for by running TRL's own GRPOConfig.__post_init__
with a world size of 8.
"""

import copy
import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType
from trl import ModelConfig, TrlParser

from stapo_trl.arguments import STAPOScriptArguments
from stapo_trl.config import STAPOConfig
from stapo_trl.launch import config_for_world_size

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_DIR = REPO / "accelerate_configs"
RECIPE_DIR = REPO / "recipes"
SLURM_SCRIPT = REPO / "scripts" / "slurm_train.sh"

# ----------------------------------------------------------------------------------------------------------------
# Expectations
# ----------------------------------------------------------------------------------------------------------------

EXPECTED_ACCELERATE = {
    "single_gpu.yaml": dict(distributed_type=DistributedType.NO, num_processes=1, num_machines=1),
    "ddp.yaml": dict(distributed_type=DistributedType.MULTI_GPU, num_processes=8, num_machines=1),
    "zero2.yaml": dict(
        distributed_type=DistributedType.DEEPSPEED, num_processes=8, num_machines=1, zero_stage=2, offload="none"
    ),
    "zero3.yaml": dict(
        distributed_type=DistributedType.DEEPSPEED, num_processes=8, num_machines=1, zero_stage=3, offload="none"
    ),
    "zero3_offload.yaml": dict(
        distributed_type=DistributedType.DEEPSPEED, num_processes=8, num_machines=1, zero_stage=3, offload="cpu"
    ),
    "multi_node_zero3.yaml": dict(
        distributed_type=DistributedType.DEEPSPEED, num_processes=16, num_machines=2, zero_stage=3, offload="none"
    ),
}
DEEPSPEED_CONFIGS = [name for name, exp in EXPECTED_ACCELERATE.items() if "zero_stage" in exp]

# model folder -> (Hub id, accelerate config it is launched with)
MODELS = {
    "qwen3-1.7b": ("Qwen/Qwen3-1.7B-Base", "zero2.yaml"),
    "qwen3-8b": ("Qwen/Qwen3-8B-Base", "zero3.yaml"),
    "qwen3-14b": ("Qwen/Qwen3-14B-Base", "zero3.yaml"),
}
METHODS = ("stapo", "justrl", "entropy20", "grpo")
MODEL_RECIPES = [(model, method) for model in MODELS for method in METHODS]

# The paper's setup on one node: 8 processes, 256 prompts x 8 rollouts per generation batch, 64 prompts per
# optimizer update, micro-batch 1 per GPU.
NUM_PROCESSES = 8
NUM_GENERATIONS = 8
COMPLETIONS_PER_GENERATION = 2048
PROMPTS_PER_UPDATE = 64
UPDATES_PER_GENERATION = 4
MAX_PROMPT_TOKENS = 1024

# Settings every paper recipe shares (whatever the model and method).
PAPER_SETTINGS = {
    "dataset_name": "dapo-math-17k",
    "dtype": "bfloat16",
    "per_device_train_batch_size": 1,
    "num_generations": NUM_GENERATIONS,
    "num_iterations": 1,
    "learning_rate": 1e-6,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 10,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "bf16": True,
    "activation_checkpointing": True,
    "scale_rewards": "group",
    "spurious_prob_threshold": 0.002,
    "spurious_entropy_quantile": 0.75,
    "spurious_token_log_steps": 20,
    "max_completion_length": 15360,
    "temperature": 1.0,
    "top_p": 1.0,
    "use_vllm": True,
    "vllm_mode": "colocate",
    "vllm_enable_sleep_mode": True,
    "logging_steps": 1,
    "report_to": "wandb",
}

# What distinguishes the four methods (the brief of each baseline); every other key is shared by the four
# recipes of one model, except the run's name and output directory.
METHOD_SETTINGS = {
    "stapo": dict(
        silence_spurious_tokens=True, loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28,
        top_entropy_quantile=1.0, renormalize_entropy_mask=False,
    ),
    "justrl": dict(
        silence_spurious_tokens=False, loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28,
        top_entropy_quantile=1.0, renormalize_entropy_mask=False,
    ),
    "entropy20": dict(
        silence_spurious_tokens=False, loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28,
        top_entropy_quantile=0.2, renormalize_entropy_mask=True,
    ),
    "grpo": dict(
        silence_spurious_tokens=False, loss_type="grpo", beta=0.04, epsilon=0.2, epsilon_high=0.2,
        top_entropy_quantile=1.0, renormalize_entropy_mask=False,
    ),
}
METHOD_KEYS = {"method", "run_name", "output_dir", *METHOD_SETTINGS["stapo"]}
# Keys allowed to differ between the models for one method (memory sizing and naming).
MODEL_KEYS = {"model_name_or_path", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "run_name", "output_dir"}

# Top-level keys TrlParser handles itself (environment variables to set before parsing).
PARSER_KEYS = {"env"}


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------

SCRIPT_FIELDS = {f.name for f in dataclasses.fields(STAPOScriptArguments)}
CONFIG_FIELDS = {f.name for f in dataclasses.fields(STAPOConfig)}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def _load_recipe(path):
    with open(path) as f:
        recipe = yaml.safe_load(f)
    assert isinstance(recipe, dict), f"{path} is not a YAML mapping"
    return recipe


def _recipe_path(model, method):
    return RECIPE_DIR / model / f"{method}.yaml"


def _all_recipe_files():
    return sorted(RECIPE_DIR.rglob("*.yaml"))


def _split_recipe(recipe):
    """Split a recipe into (script arguments, STAPOConfig kwargs, ModelConfig kwargs); parser keys dropped."""
    script, config, model = {}, {}, {}
    for key, value in recipe.items():
        if key in PARSER_KEYS:
            continue
        if key in SCRIPT_FIELDS:
            script[key] = value
        elif key in CONFIG_FIELDS:
            config[key] = value
        elif key in MODEL_FIELDS:
            model[key] = value
    return script, config, model


# On a 1-process CPU machine: no bf16 and no vLLM (neither is available). Everything else keeps its value.
CPU_OVERRIDES = dict(bf16=False, use_vllm=False)


def _config_on(world_size, recipe, tmp_path, **overrides):
    _, config_kwargs, _ = _split_recipe(recipe)
    config_kwargs.update(CPU_OVERRIDES, **overrides)
    config_kwargs["output_dir"] = str(tmp_path)
    return config_for_world_size(world_size)(**config_kwargs)


def _launch_args(config_file, extra=()):
    """What `accelerate launch --config_file <config_file> [extra] train.py` resolves to, without launching.

    Uses accelerate's own argument parser and validation (private helpers of accelerate.commands.launch, the
    same ones `accelerate launch` calls), then prepares the DeepSpeed launch environment.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config_file), *extra, "train.py"])
    args, defaults, mp_from_config_flag = _validate_launch_command(args)
    assert args.use_deepspeed
    fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config_flag else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    return args, {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


def _deepspeed_plugin(env, monkeypatch):
    """accelerate's DeepSpeedPlugin as the training processes build it from the launch environment."""
    from accelerate.utils import DeepSpeedPlugin

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return DeepSpeedPlugin()


# ----------------------------------------------------------------------------------------------------------------
# accelerate configs
# ----------------------------------------------------------------------------------------------------------------


def test_accelerate_config_files_are_the_expected_ones():
    assert sorted(p.name for p in ACCELERATE_DIR.glob("*.yaml")) == sorted(EXPECTED_ACCELERATE)
    assert (ACCELERATE_DIR / "README.md").is_file()
    readme = (ACCELERATE_DIR / "README.md").read_text()
    for name in EXPECTED_ACCELERATE:
        assert f"`{name}`" in readme, f"{name} is missing from accelerate_configs/README.md"


@pytest.mark.parametrize("name", sorted(EXPECTED_ACCELERATE))
def test_accelerate_config_loads(name):
    path = ACCELERATE_DIR / name
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert ClusterConfig.from_yaml_file(str(path)) == config
    expected = EXPECTED_ACCELERATE[name]
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.distributed_type == expected["distributed_type"]
    assert config.num_processes == expected["num_processes"]
    assert config.num_machines == expected["num_machines"]
    assert config.mixed_precision == "bf16"
    assert config.use_cpu is False
    if "zero_stage" in expected:
        ds = config.deepspeed_config
        assert ds["zero_stage"] == expected["zero_stage"]
        assert ds["offload_optimizer_device"] == expected["offload"]
        assert ds["offload_param_device"] == expected["offload"]
        assert ds["deepspeed_multinode_launcher"] == "standard"
        assert ds.get("zero3_init_flag", False) is (expected["zero_stage"] == 3)
        if expected["zero_stage"] == 3:
            assert ds["zero3_save_16bit_model"] is True
        # The Trainer fills these from the recipe; fixing them here would conflict with it.
        assert "gradient_accumulation_steps" not in ds
        assert "gradient_clipping" not in ds
    else:
        assert config.deepspeed_config == {}


@pytest.mark.parametrize("name", DEEPSPEED_CONFIGS)
def test_deepspeed_launch_environment(name, monkeypatch):
    """`accelerate launch` turns the file into the DeepSpeed settings the training processes receive."""
    expected = EXPECTED_ACCELERATE[name]
    args, env = _launch_args(ACCELERATE_DIR / name)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(expected["zero_stage"])
    assert int(args.num_processes) == expected["num_processes"]

    plugin = _deepspeed_plugin(env, monkeypatch)
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == zero["stage"] == expected["zero_stage"]
    assert zero["offload_optimizer"]["device"] == expected["offload"]
    assert zero["offload_param"]["device"] == expected["offload"]
    if expected["zero_stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert plugin.deepspeed_config[key] == "auto"


def test_multi_node_config_placeholders_are_overridden(monkeypatch):
    """The launcher's command-line values replace the template's rank, address and process count."""
    path = ACCELERATE_DIR / "multi_node_zero3.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["machine_rank"] == 0
    assert isinstance(raw["main_process_port"], int)
    assert not re.fullmatch(r"[\d.]+", str(raw["main_process_ip"])), "main_process_ip must be an obvious placeholder"

    args, _ = _launch_args(
        path,
        ["--num_machines", "4", "--num_processes", "32", "--machine_rank", "2",
         "--main_process_ip", "10.0.0.7", "--main_process_port", "29555"],
    )
    # torchrun on this node: 8 local ranks, 4 nodes, node rank 2, static rendezvous on node 0.
    assert int(args.nproc_per_node) == 8
    assert int(args.nnodes) == 4
    assert int(args.node_rank) == 2
    endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert endpoint == "10.0.0.7:29555"


# ----------------------------------------------------------------------------------------------------------------
# recipes: files, keys and values
# ----------------------------------------------------------------------------------------------------------------


def test_model_recipe_files_are_the_expected_ones():
    for model in MODELS:
        assert sorted(p.name for p in (RECIPE_DIR / model).glob("*.yaml")) == sorted(f"{m}.yaml" for m in METHODS)


def test_script_argument_names_match_the_launcher():
    assert {"method", "dataset_name"} <= SCRIPT_FIELDS
    # The three dataclasses are parsed together: a shared field name would be ambiguous.
    assert not SCRIPT_FIELDS & CONFIG_FIELDS
    assert not SCRIPT_FIELDS & MODEL_FIELDS


def _recipe_params():
    return [pytest.param(path, id=str(path.relative_to(RECIPE_DIR))) for path in _all_recipe_files()]


@pytest.mark.parametrize("path", _recipe_params())
def test_recipe_keys_are_real_fields(path):
    recipe = _load_recipe(path)
    unknown = sorted(set(recipe) - SCRIPT_FIELDS - CONFIG_FIELDS - MODEL_FIELDS - PARSER_KEYS)
    assert not unknown, f"{path.name}: not a field of STAPOScriptArguments, STAPOConfig or ModelConfig: {unknown}"


@pytest.mark.parametrize("path", _recipe_params())
def test_recipe_values_validate(path, tmp_path):
    """The values are accepted by the config classes (on one CPU process, without bf16 and vLLM)."""
    recipe = _load_recipe(path)
    script_kwargs, config_kwargs, model_kwargs = _split_recipe(recipe)
    STAPOScriptArguments(**script_kwargs)
    STAPOConfig(**{**config_kwargs, **CPU_OVERRIDES, "output_dir": str(tmp_path)})
    ModelConfig(**model_kwargs)


@pytest.mark.parametrize("path", _recipe_params())
def test_recipe_parses_like_train_py(path, tmp_path):
    """train.py's parse: TrlParser with --config, every key consumed, CLI overrides applied on top."""
    parser = TrlParser((STAPOScriptArguments, STAPOConfig, ModelConfig))
    script_args, config, model_args = parser.parse_args_and_config(
        ["--config", str(path), "--output_dir", str(tmp_path), "--bf16", "false", "--use_vllm", "false"]
    )
    recipe = _load_recipe(path)
    for key, value in recipe.items():
        if key in PARSER_KEYS or key in CPU_OVERRIDES or key == "output_dir":
            continue
        parsed = next(getattr(obj, key) for obj in (script_args, config, model_args) if hasattr(obj, key))
        if key == "report_to":
            parsed, value = list(parsed), [value] if isinstance(value, str) else value
        parsed = getattr(parsed, "value", parsed)  # enums (lr_scheduler_type, save_strategy)
        assert parsed == value, f"{path.name}: {key} parsed as {parsed!r}, recipe says {value!r}"


@pytest.mark.parametrize(("model", "method"), MODEL_RECIPES)
def test_paper_settings(model, method):
    recipe = _load_recipe(_recipe_path(model, method))
    hub_id, _ = MODELS[model]
    assert recipe["model_name_or_path"] == hub_id
    assert recipe["method"] == method
    for key, value in PAPER_SETTINGS.items():
        assert recipe[key] == value, f"{model}/{method}: {key} = {recipe.get(key)!r}, expected {value!r}"
    for key, value in METHOD_SETTINGS[method].items():
        assert recipe[key] == value, f"{model}/{method}: {key} = {recipe.get(key)!r}, expected {value!r}"
    assert recipe["save_steps"] > 0 and recipe["save_total_limit"] >= 1
    assert model in recipe["run_name"] and method in recipe["run_name"]
    assert recipe["output_dir"] == f"outputs/{model}/{method}"


@pytest.mark.parametrize("model", MODELS)
def test_methods_differ_only_in_method_keys(model):
    recipes = {method: _load_recipe(_recipe_path(model, method)) for method in METHODS}
    reference = recipes["stapo"]
    for method, recipe in recipes.items():
        assert set(recipe) == set(reference), f"{model}/{method} has other keys than {model}/stapo"
        differing = {k for k in recipe if recipe[k] != reference[k]}
        assert differing <= METHOD_KEYS, f"{model}/{method} differs from stapo outside the method keys: {differing}"


@pytest.mark.parametrize("method", METHODS)
def test_models_differ_only_in_model_keys(method):
    recipes = {model: _load_recipe(_recipe_path(model, method)) for model in MODELS}
    reference = recipes["qwen3-8b"]
    for model, recipe in recipes.items():
        assert set(recipe) == set(reference), f"{model}/{method} has other keys than qwen3-8b/{method}"
        differing = {k for k in recipe if recipe[k] != reference[k]}
        assert differing <= MODEL_KEYS, f"{model}/{method} differs from qwen3-8b outside the model keys: {differing}"


def test_run_names_and_output_dirs_are_unique():
    recipes = [_load_recipe(_recipe_path(model, method)) for model, method in MODEL_RECIPES]
    assert len({r["run_name"] for r in recipes}) == len(recipes)
    assert len({r["output_dir"] for r in recipes}) == len(recipes)


@pytest.mark.parametrize(("model", "method"), MODEL_RECIPES)
def test_recipe_header_names_its_launch_command(model, method):
    """The comment block at the top says how to launch the file, with the accelerate config it was sized for."""
    path = _recipe_path(model, method)
    text = path.read_text()
    header = text[: text.index("\nmethod:")]
    assert all(line.startswith("#") or not line.strip() for line in header.splitlines())
    launch = re.search(r"accelerate launch --config_file (\S+) train\.py --config (\S+)", header)
    assert launch, f"{path} does not say how to launch it"
    config_file, recipe_file = launch.groups()
    assert config_file == f"accelerate_configs/{MODELS[model][1]}"
    assert (REPO / config_file).is_file()
    assert recipe_file == str(path.relative_to(REPO))
    # The batch arithmetic is written out in the header.
    for fact in ("2048", "256 prompts", "512", "64 prompts", "= 4"):
        assert fact in header, f"{path}: the header's batch arithmetic does not mention {fact!r}"


@pytest.mark.parametrize(("model", "method"), MODEL_RECIPES)
def test_vllm_sizing(model, method):
    recipe = _load_recipe(_recipe_path(model, method))
    assert 0.0 < recipe["vllm_gpu_memory_utilization"] < 0.9  # the trainer's state shares the GPU
    assert NUM_PROCESSES % recipe["vllm_tensor_parallel_size"] == 0
    assert recipe["vllm_max_model_length"] >= MAX_PROMPT_TOKENS + recipe["max_completion_length"]
    if model == "qwen3-14b":
        assert recipe["vllm_enable_sleep_mode"] is True
        assert recipe["activation_checkpointing"] is True


# ----------------------------------------------------------------------------------------------------------------
# recipes: batch arithmetic on 8 processes
# ----------------------------------------------------------------------------------------------------------------


def _batch_facts(per_device, grad_accum, steps_per_generation, generation_batch_size, num_generations, processes):
    completions_per_update = per_device * processes * grad_accum
    return dict(
        completions_per_generation=generation_batch_size,
        prompts_per_generation=generation_batch_size / num_generations,
        completions_per_update=completions_per_update,
        prompts_per_update=completions_per_update / num_generations,
        updates_per_generation=steps_per_generation / grad_accum,
    )


PAPER_BATCH = dict(
    completions_per_generation=COMPLETIONS_PER_GENERATION,
    prompts_per_generation=COMPLETIONS_PER_GENERATION / NUM_GENERATIONS,
    completions_per_update=PROMPTS_PER_UPDATE * NUM_GENERATIONS,
    prompts_per_update=PROMPTS_PER_UPDATE,
    updates_per_generation=UPDATES_PER_GENERATION,
)


@pytest.mark.parametrize(("model", "method"), MODEL_RECIPES)
def test_batch_arithmetic_from_yaml(model, method):
    """The formula of GRPOConfig.__post_init__, evaluated by hand from the YAML values for 8 processes."""
    recipe = _load_recipe(_recipe_path(model, method))
    per_device = recipe["per_device_train_batch_size"]
    grad_accum = recipe["gradient_accumulation_steps"]
    assert per_device == 1  # micro-batch of one completion per GPU
    # Exactly one of the two may be set (TRL raises otherwise).
    assert ("generation_batch_size" in recipe) != ("steps_per_generation" in recipe)
    if "generation_batch_size" in recipe:
        generation_batch_size = recipe["generation_batch_size"]
        assert generation_batch_size % (per_device * NUM_PROCESSES) == 0
        steps_per_generation = generation_batch_size // (per_device * NUM_PROCESSES)
    else:
        steps_per_generation = recipe["steps_per_generation"]
        generation_batch_size = per_device * NUM_PROCESSES * steps_per_generation
    # A generation batch must be used up by whole optimizer steps.
    assert steps_per_generation % grad_accum == 0
    assert generation_batch_size % recipe["num_generations"] == 0
    facts = _batch_facts(
        per_device, grad_accum, steps_per_generation, generation_batch_size, recipe["num_generations"], NUM_PROCESSES
    )
    assert facts == PAPER_BATCH


@pytest.mark.parametrize(("model", "method"), MODEL_RECIPES)
def test_batch_arithmetic_by_trl_on_8_processes(model, method, tmp_path):
    """TRL's own GRPOConfig.__post_init__ with a world size of 8 derives the paper's batches."""
    recipe = _load_recipe(_recipe_path(model, method))
    config = _config_on(NUM_PROCESSES, recipe, tmp_path)
    assert config.world_size == NUM_PROCESSES
    facts = _batch_facts(
        config.per_device_train_batch_size,
        config.gradient_accumulation_steps,
        config.steps_per_generation,
        config.generation_batch_size,
        config.num_generations,
        NUM_PROCESSES,
    )
    assert facts == PAPER_BATCH
    assert config.steps_per_generation == 256 and config.gradient_accumulation_steps == 64


@pytest.mark.parametrize("model", MODELS)
def test_deepspeed_sees_the_paper_update_batch(model, monkeypatch, tmp_path):
    """DeepSpeed's train_batch_size, filled by the Trainer from the recipe on 8 processes, is 512 completions."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    _, config_name = MODELS[model]
    _, env = _launch_args(ACCELERATE_DIR / config_name)
    plugin = _deepspeed_plugin(env, monkeypatch)
    config = _config_on(NUM_PROCESSES, _load_recipe(_recipe_path(model, "stapo")), tmp_path)
    ds = HfTrainerDeepSpeedConfig(copy.deepcopy(plugin.deepspeed_config))
    ds.trainer_config_process(config)
    assert ds.config["train_batch_size"] == PROMPTS_PER_UPDATE * NUM_GENERATIONS
    assert ds.config["train_micro_batch_size_per_gpu"] == 1
    assert ds.config["gradient_accumulation_steps"] == 64
    assert ds.config["gradient_clipping"] == 1.0


# ----------------------------------------------------------------------------------------------------------------
# Slurm script
# ----------------------------------------------------------------------------------------------------------------

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")


def _slurm_dry_run(env, args=()):
    base = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "DRY_RUN": "1"}
    return subprocess.run(
        ["bash", str(SLURM_SCRIPT), *args], cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


@needs_bash
def test_slurm_script_syntax():
    subprocess.run(["bash", "-n", str(SLURM_SCRIPT)], check=True)
    text = SLURM_SCRIPT.read_text()
    assert "#SBATCH --nodes=" in text
    assert "#SBATCH --ntasks-per-node=1" in text
    assert "scontrol show hostnames" in text
    assert "accelerate_configs/multi_node_zero3.yaml" in text


@needs_bash
@pytest.mark.parametrize(("model", "method"), [("qwen3-8b", "stapo"), ("qwen3-14b", "grpo")])
def test_slurm_command_keeps_the_paper_batch_on_4_nodes(model, method, monkeypatch, tmp_path):
    """The per-node command of a 4 x 8 GPU job, read back by accelerate's and train.py's own parsers."""
    recipe_path = _recipe_path(model, method)
    result = _slurm_dry_run(
        {
            "SLURM_JOB_NUM_NODES": "4",
            "SLURM_NODEID": "3",
            "MASTER_ADDR": "node001",
            "RECIPE": str(recipe_path.relative_to(REPO)),
        },
        ["--max_steps", "40"],
    )
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout.strip().splitlines()[-1])
    assert command[:2] == ["accelerate", "launch"]
    script_at = command.index("train.py")
    launch_args, train_args = command[2:script_at], command[script_at + 1 :]

    args, env = _launch_args(REPO / launch_args[launch_args.index("--config_file") + 1], launch_args[2:])
    assert int(args.nproc_per_node) == 8 and int(args.nnodes) == 4 and int(args.node_rank) == 3
    endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert endpoint == "node001:29500"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"

    # train.py's parse on 32 processes: same generation and update batches as the recipe on 8.
    parser = TrlParser((STAPOScriptArguments, config_for_world_size(32), ModelConfig))
    _, config, _ = parser.parse_args_and_config(
        [*train_args, "--output_dir", str(tmp_path), "--bf16", "false", "--use_vllm", "false"]
    )
    assert config.gradient_accumulation_steps == 16 and config.steps_per_generation == 64
    assert config.max_steps == 40
    facts = _batch_facts(
        config.per_device_train_batch_size,
        config.gradient_accumulation_steps,
        config.steps_per_generation,
        config.generation_batch_size,
        config.num_generations,
        32,
    )
    assert facts == PAPER_BATCH


@needs_bash
def test_slurm_script_rejects_bad_node_counts():
    mismatch = _slurm_dry_run({"SLURM_JOB_NUM_NODES": "4", "NNODES": "2", "MASTER_ADDR": "node001"})
    assert mismatch.returncode != 0 and "sbatch --nodes=2" in mismatch.stderr
    # 3 x 8 = 24 processes cannot split 512 completions per update evenly.
    indivisible = _slurm_dry_run({"SLURM_JOB_NUM_NODES": "3", "MASTER_ADDR": "node001"})
    assert indivisible.returncode != 0 and "cannot be rescaled" in indivisible.stderr
