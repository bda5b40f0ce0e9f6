"""Stage parameters: the base every stage's dataclass extends, and the validation they share.

A stage module declares its parameters as a dataclass extending `StageParams`, each field made with
`param`: its default, a help line and its constraints side by side (as TRL's configs declare theirs).
`StageParams.validate` then checks types, declared constraints and the stage's own cross-field rules
(`StageParams.problems`), and reports every problem at once with the source and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda", "mps")
# In a run file, "stage:NAME" stands for the main output of the earlier stage NAME.
STAGE_REF = "stage:"
# Settings of an OpenAI-compatible endpoint or vLLM engine, as `porover.generation.make_backend` takes them.
ENDPOINT_FIELDS = ("base_url", "api_key_env", "concurrency", "max_retries", "request_timeout", "extra_body",
                   "tensor_parallel_size", "gpu_memory_utilization")


def param(default, help: str, *, choices: typing.Sequence | None = None, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None, input: bool = False):
    """A dataclass field with its help text and constraints beside it.

    Args:
        default: The default; a list or dict default is copied for every instance.
        help: One line for the reader of the parameters (also checked against the notebook's comment).
        choices: Allowed values.
        ge, gt, le, lt: Bounds on a number (None values pass; use ``ge=1`` for a positive count).
        input: The value names a file, folder or model whose content the stage reads (the runner digests it).
    """
    metadata = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "input": input}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def is_stage_ref(value: object) -> bool:
    """Whether a parameter value is a ``stage:NAME`` reference to an earlier stage's output."""
    return isinstance(value, str) and value.startswith(STAGE_REF)


def referenced_stage(value: object) -> str | None:
    """NAME for a ``stage:NAME`` value, else None."""
    return value[len(STAGE_REF):] if is_stage_ref(value) else None


def looks_like_path(name: str) -> bool:
    """Whether a model or data name is a local path rather than a registry name or hub id."""
    return name.startswith(("/", "./", "../", "~")) or name.endswith((".csv", ".jsonl", ".json"))


def file_stage(name: str) -> str:
    """The run file's stage a sweep copy's name stands for: ``dpo`` for ``dpo[beta=0.5]`` (`porover.sweeps`)."""
    return name.split("[", 1)[0]


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``outputs/`` or
    ``pyproject.toml``, so a notebook run from ``notebooks/`` writes to the project's ``outputs/``."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "outputs").is_dir() or (folder / "pyproject.toml").is_file():
            return folder
    return here


@dataclass
class Settings:
    """A group of parameters declared with `param` and validated together: a stage's (`StageParams`), or the
    inference settings of a kind of model folder (`porover.model_folders.ModelHandle.SETTINGS`)."""

    def problems(self, where: str) -> list[str]:
        """Rules across fields (files exist, names are known...); override and extend."""
        return []

    def environment_problems(self, where: str) -> list[str]:
        """What this machine lacks for the stage to run (an API key variable...); checked before it runs."""
        return []

    @classmethod
    def validate(cls, values: dict, where: str, environment: bool = True) -> tuple["Settings | None", list[str]]:
        """Build the parameters from ``values`` and list every problem, each as ``where.key: what``.

        Args:
            values: The parameters, by name.
            where: The source and place, e.g. ``"params/demo.yaml: stages.sft"``.
            environment: Also check what the machine must provide (`environment_problems`).
        """
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in ordered_fields(cls)}
        errors = [f"{where}.{key}: unknown key; expected one of: {', '.join(fields)}" for key in values if key not in fields]
        for key, value in values.items():
            if key in fields:
                errors += type_errors(value, hints[key], f"{where}.{key}")
        if errors:
            return None, errors
        params = cls(**values)
        for name, spec in fields.items():
            errors += constraint_errors(getattr(params, name), spec.metadata, f"{where}.{name}")
        errors += secret_errors(values, where) + params.problems(where)
        if isinstance(params, SpendingParams):
            errors += params.spending_problems(where)
        return params, errors + (params.environment_problems(where) if environment else [])

    @classmethod
    def from_namespace(cls, namespace: dict, source: str = "notebook parameters"):
        """Build and validate from a notebook's globals (the variables of its ``parameters`` cell).

        Raises:
            ValueError: Listing every problem, each with ``source`` and the key.
        """
        values = {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace}
        params, errors = cls.validate(values, source)
        if errors:
            raise ValueError("invalid parameters:\n  " + "\n  ".join(errors))
        return params


@dataclass
class StageParams(Settings):
    """What every stage's parameters have: the run-wide settings and where the stage writes.

    Attributes:
        seed: Seed for subsampling, sampling, data order and the bootstrap.
        device: Where to compute.
        run_dir: Run folder; the stage writes under ``run_dir/stage_name`` (relative: to the project root).
        stage_name: Name of this stage in the run.
    """

    seed: int = param(0, "seed for subsampling, sampling, data order and the bootstrap")
    device: str = param("auto", "auto, cpu, cuda or mps", choices=DEVICES)
    run_dir: str = param("outputs/scratch", "run folder; this stage writes under run_dir/stage_name")
    stage_name: str = param("stage", "name of this stage in the run")

    @property
    def stage_dir(self) -> Path:
        """The folder this stage writes to: ``run_dir/stage_name``, a relative run folder under the project root."""
        run_dir = Path(self.run_dir).expanduser()
        return (run_dir if run_dir.is_absolute() else project_root() / run_dir) / self.stage_name

    def lock_run_folder(self) -> "StageParams":
        """Become the run folder's one writer for the rest of this process (a notebook's validation cell calls it).

        Under the runner this joins the runner's lock (the kernel inherits its token); a notebook run by hand
        takes the lock itself and holds it until its kernel shuts down (`porover.run_lock`).

        Raises:
            porover.run_lock.RunLocked: Another writer (a ``porover run``, another kernel) holds the folder.
        """
        from porover.run_lock import describe_process, hold_run_lock

        hold_run_lock(self.stage_dir.parent, f"stage {self.stage_name!r} in {describe_process()}")
        return self

    @property
    def store_dir(self) -> Path:
        """The folder of the stage's content-keyed stores (samples, completions): a sweep's copy of a stage
        (``dpo[beta=0.5]``) shares the run file stage's (``dpo``), so variants sample nothing twice."""
        return self.stage_dir.parent / file_stage(self.stage_name)


@dataclass
class EndpointParams:
    """Settings of an OpenAI-compatible endpoint or a vLLM engine, for stages that generate through one.

    Attributes: see each field's help.
    """

    base_url: str = param("", "OpenAI-compatible endpoint root, e.g. http://127.0.0.1:8000/v1 ('' = OpenAI itself)")
    api_key_env: str = param("OPENAI_API_KEY", "NAME of the environment variable holding the API key (never the key)")
    concurrency: int = param(8, "requests in flight at once (openai)", ge=1)
    max_retries: int = param(6, "retries with backoff on 429, 5xx, connection errors and timeouts (openai)", ge=0)
    request_timeout: float = param(300.0, "seconds per request (openai)", gt=0)
    extra_body: dict = param({}, "extra request fields for the endpoint (openai)")
    tensor_parallel_size: int = param(1, "GPUs per model (vllm)", ge=1)
    gpu_memory_utilization: float = param(0.9, "share of GPU memory vLLM may use", gt=0, le=1)

    def endpoint_settings(self) -> dict:
        """These settings, as `porover.generation.make_backend` takes them."""
        return {name: getattr(self, name) for name in ENDPOINT_FIELDS}

    def endpoint_problems(self, where: str) -> list[str]:
        """A variable name where the key's name belongs (``""``: a local server that needs no key)."""
        if self.api_key_env and (not self.api_key_env.replace("_", "").isalnum() or looks_like_secret(self.api_key_env)):
            return [f"{where}.api_key_env: give the NAME of the environment variable holding the key, not the key"]
        return []

    def key_problems(self, where: str, backends_in_use: typing.Iterable[str]) -> list[str]:
        """The key variable unset while an endpoint will be called: fail now, not after retries."""
        if "openai" not in backends_in_use or not self.api_key_env or os.environ.get(self.api_key_env):
            return []
        endpoint = self.base_url or "the OpenAI API"
        return [f"{where}.api_key_env: {endpoint} is called with the key in the environment variable "
                f"{self.api_key_env}, which is not set; set it, or give api_key_env: '' for a local server that "
                "needs no key"]


@dataclass
class SpendingParams:
    """The cost cap of a stage that may call a priced endpoint (teacher, LLM judges, EvoRefuse's mutator).

    Checked before a run against the stage's worst-case estimate (`porover.spending.cap_errors`) and while it
    runs against the usage the API reports (`porover.spending.Budget`). Neither changes what the stage writes,
    so changing them re-runs nothing.
    """

    max_cost_usd: float | None = param(None, "stop the stage before its endpoint calls cost more than this many USD "
                                             "(at prices; counted across resumes; null = no cap)", ge=0)
    prices: dict[str, list[float]] = param({}, "USD per million input and output tokens of each endpoint model, "
                                               "e.g. {gpt-4o: [2.5, 10.0]} (a run file's top-level prices fill it)")

    def price_table(self) -> dict[str, list[float]]:
        """Model -> [input, output] USD per million tokens, for this stage's budget."""
        return dict(self.prices)

    def spending_problems(self, where: str) -> list[str]:
        """Prices that are not two non-negative numbers."""
        return [f"{where}.prices.{model}: expected [USD per 1M input tokens, USD per 1M output tokens], got {pair!r}"
                for model, pair in self.prices.items() if len(pair) != 2 or min(pair) < 0]


def looks_like_secret(value: object) -> bool:
    """Whether a string looks like an API key (``sk-...``, ``hf_...`` or a long unbroken token)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.startswith(("sk-", "hf_", "gsk_", "xai-")) and len(text) > 16


def secret_errors(values: object, where: str) -> list[str]:
    """Every value (nested in lists and mappings too) that looks like an API key."""
    if isinstance(values, dict):
        return [e for key, value in values.items() for e in secret_errors(value, f"{where}.{key}")]
    if isinstance(values, list):
        return [e for i, value in enumerate(values) for e in secret_errors(value, f"{where}[{i}]")]
    if looks_like_secret(values):
        return [f"{where}: this looks like an API key; keys never go into parameters: put it in an environment "
                "variable and give that variable's name as api_key_env"]
    return []


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def type_errors(value, hint, where: str) -> list[str]:
    """Check ``value`` against a type hint built from str/int/float/bool/None/list/dict/unions."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if any(not type_errors(value, arg, where) for arg in args):
            return []
        return [f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}"]
    if hint is type(None):
        return [] if value is None else [f"{where}: expected null, got {value!r}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r}"]
        return [e for i, item in enumerate(value) for e in type_errors(item, args[0], f"{where}[{i}]")]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {value!r}"]
        if not args:
            return []
        return [e for k, v in value.items()
                for e in type_errors(k, args[0], f"{where} key") + type_errors(v, args[1], f"{where}.{k}")]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return []
    if hint is int and isinstance(value, bool):
        return [f"{where}: expected int, got {value!r}"]
    if hint is typing.Any:
        return []
    if not isinstance(value, hint):
        return [f"{where}: expected {_type_name(hint)}, got {value!r}"]
    return []


def constraint_errors(value, metadata: typing.Mapping, where: str) -> list[str]:
    """Check a value against the ``choices`` and bounds declared with `param`."""
    if value is None:
        return []
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        return [f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}"]
    bounds = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b), ("le", "<=", lambda a, b: a <= b),
              ("lt", "<", lambda a, b: a < b)]
    failed = [f"{sign} {metadata[key]}" for key, sign, holds in bounds
              if metadata.get(key) is not None and isinstance(value, (int, float)) and not holds(value, metadata[key])]
    return [f"{where}: expected a value {' and '.join(failed)}, got {value}"] if failed else []


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """A stage's own fields first, then its cost cap (`SpendingParams`), then the run-wide ones of `StageParams`
    (as a reader wants them)."""
    base = {f.name for f in dataclasses.fields(StageParams)}
    spending = {f.name for f in dataclasses.fields(SpendingParams)}
    fields = dataclasses.fields(cls)
    return ([f for f in fields if f.name not in base | spending] + [f for f in fields if f.name in spending]
            + [f for f in fields if f.name in base])


def parameters_cell(cls: type) -> str:
    """The ``parameters`` cell of a stage notebook: every field as a literal with its help as a comment.

    Own fields come first, then the run-wide ones of `StageParams`; a test keeps each notebook's cell
    equal to this, so the notebook documents exactly what the dataclass validates.
    """
    defaults = cls()
    lines = ["# Parameters (papermill injects a cell after this one): literals only, one per line with what it is."]
    lines += [f"{f.name} = {getattr(defaults, f.name)!r}  # {f.metadata['help']}" for f in ordered_fields(cls)]
    return "\n".join(lines)
