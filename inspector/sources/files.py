"""Read rollouts from files: this inspector's own JSON record, and completions produced elsewhere.

Accepted: a rollout record (`.json`, written by the app's download or `--json`), TRL-style completion
tables (`prompt` / `completion` / `reward` columns, as CSV, Parquet or JSONL), TRL's GRPO completion logs
(`completions_{step:05d}.parquet` from `log_completions`: `step`, `prompt`, `completion`, one column per reward
function, the `log_extra` columns, `advantage`) and verl rollout dumps (`{step}.jsonl` with `input` / `output` / `gts` / `score` / `step`
and any extra reward fields). Every column beyond prompt and completion is kept, by name. Nothing from a file is ever unpickled or executed: JSON, CSV and
Parquet are parsed as data, and a file that looks like a pickle, a zip or an executable is refused.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..limits import Limits

PROMPT_KEYS = ("prompt", "input", "query")
COMPLETION_KEYS = ("completion", "output", "response")
REWARD_KEYS = ("reward", "score", "rewards", "scores")

# magic bytes of formats that can carry code: pickle (protocol 2+), zip (torch.save, .npz), ELF, PE, gzip
_REFUSED = {b"\x80\x02": "a pickle", b"\x80\x03": "a pickle", b"\x80\x04": "a pickle", b"\x80\x05": "a pickle",
            b"PK": "a zip archive (e.g. torch.save)", b"\x7fE": "an executable", b"MZ": "an executable",
            b"\x1f\x8b": "a gzip archive"}


TRL_GRPO_FIXED = ("step", "prompt", "completion", "advantage")
VERL_FIXED = ("input", "output", "score", "step", "gts")
BUILTIN_LOGGED_NAMES = ("smollm2-sentiment", "length_reward", "format_reward", "exact_answer_reward")
"""The names TRL logs the built-in reward functions under (the default reward model's and the functions')."""


@dataclass
class Completions:
    """Prompt / completion pairs read from a file, with the rewards the file held, if any.

    `kind`: "trl-grpo" (a `log_completions` table: `reward_columns` holds one column per reward function,
    `reward_weights` their weights (TRL's `reward_weights`), `extra_columns` the `log_extra` ones, `advantages`
    TRL's advantage, `reward_columns_how` how the reward columns were told from the extra ones), "verl" (a rollout
    dump: `prompt_is_text`, the prompt was decoded from the trainer's ids after its chat template) or "table".
    `columns` keeps every other column of the file by name (verl's `gts` and extra reward fields, TRL's
    per-function rewards and extra columns, `step`). `prompt_messages`: the whole chat prompt of each row
    (system and user messages) when the file holds chat-format prompts; `prompts` then holds the last message's
    text, for display."""

    prompts: list[str]
    completions: list[str]
    rewards: list[float] | None
    source: str
    kind: str = "table"
    columns: dict[str, list] = field(default_factory=dict)
    reward_columns: list[str] = field(default_factory=list)
    advantages: list[float] | None = None
    prompt_is_text: bool = False
    reward_weights: list[float] | None = None
    extra_columns: list[str] = field(default_factory=list)
    reward_columns_how: str = ""
    prompt_messages: list[list[dict]] | None = None

    def rewards_per_func(self):
        """The file's per-function rewards as TRL's `rewards_per_func` (B, F) float32, NaN where None."""
        import torch

        return torch.tensor([[as_number(v) for v in self.columns[c]] for c in self.reward_columns],
                            dtype=torch.float32).T.reshape(len(self.prompts), len(self.reward_columns))

    def num_generations(self) -> int | None:
        """The group size: the run length of equal consecutive prompts, when every group has it (TRL logs the
        completions of a prompt next to each other); None otherwise."""
        runs, n = [], 1
        keys = [json.dumps(m, sort_keys=True) for m in self.prompt_messages] if self.prompt_messages else self.prompts
        for a, b in zip(keys, keys[1:]):
            if a == b:
                n += 1
            else:
                runs.append(n)
                n = 1
        runs.append(n)
        return runs[0] if len(set(runs)) == 1 else None


def as_number(value) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_size(size: int, name: str, limits: Limits) -> None:
    if size > limits.max_upload_bytes:
        raise InputError(f"{name} is {size:,} bytes, over the upload limit of {limits.max_upload_bytes:,} "
                         "(max_upload_bytes, set by INSPECTOR_MAX_UPLOAD_BYTES).")


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _check_depth(text: str, name: str, limits: Limits) -> None:
    """Refuse JSON nested deeper than max_upload_depth, before a recursive parser sees it.

    One pass without recursion over the brackets outside strings (a record nests 4 levels, a chat cell 3).
    """
    if text.count("[") + text.count("{") <= limits.max_upload_depth:
        return
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        c = match.group()
        if c in "[{":
            depth += 1
            if depth > limits.max_upload_depth:
                line = text.count("\n", 0, match.start()) + 1
                raise InputError(
                    f"{name} nests arrays or objects more than {limits.max_upload_depth} levels deep (line {line}); "
                    "a rollout record or a table of completions needs a few levels "
                    "(max_upload_depth, set by INSPECTOR_MAX_UPLOAD_DEPTH)."
                )
        elif c in "]}":
            depth -= 1


def _type_depth(t) -> int:
    """How deep an Arrow type nests (a list of structs of strings: 3), without recursion."""
    deepest, stack = 0, [(t, 1)]
    while stack:
        t, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((t.field(i).type, d + 1) for i in range(t.num_fields))
    return deepest


def _loads(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not JSON (line {exc.lineno}: {exc.msg}).") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer over Python's 4300-digit limit
        raise InputError(f"{where} holds a value that cannot be read: {str(exc).splitlines()[0][:200]}") from None


def _check_bytes(data: bytes, name: str, limits: Limits) -> None:
    _check_size(len(data), name, limits)
    if not data.strip():
        raise InputError(f"{name} is empty.")
    for magic, what in _REFUSED.items():
        if data.startswith(magic):
            raise InputError(f"{name} is {what}, not JSON, JSONL, CSV or Parquet; such files are never opened here.")


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None


def _rows_from(data: bytes, name: str, limits: Limits) -> list[dict] | dict:
    suffix = Path(name).suffix.lower()
    if data.startswith(b"PAR1") or suffix == ".parquet":
        if not data.startswith(b"PAR1"):
            raise InputError(f"{name} is not a Parquet file (no PAR1 header).")
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
        except ImportError:
            raise InputError("Reading Parquet needs pyarrow: pip install pyarrow.") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for malformed files
            raise InputError(f"{name} is not a readable Parquet file: {exc}") from None
        if table.num_rows > limits.max_upload_rows:
            raise _too_many(name, table.num_rows, limits)
        for column in table.schema:
            if _type_depth(column.type) > limits.max_upload_depth:
                raise InputError(
                    f"{name}: column {column.name!r} nests more than {limits.max_upload_depth} levels deep; a table "
                    "of completions holds text or chat messages (max_upload_depth, set by INSPECTOR_MAX_UPLOAD_DEPTH)."
                )
        return table.to_pylist()
    text = _text(data, name)
    if suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as exc:
            raise InputError(f"{name} is not a readable CSV file: {exc}") from None
        if len(rows) > limits.max_upload_rows:
            raise _too_many(name, len(rows), limits)
        return rows
    _check_depth(text, name, limits)
    stripped = text.lstrip()
    if suffix == ".jsonl" or (stripped.startswith("{") and "\n{" in stripped):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if len(rows) >= limits.max_upload_rows:
                raise _too_many(name, f"more than {limits.max_upload_rows}", limits)
            row = _loads(line, f"{name}, line {n},")
            if not isinstance(row, dict):
                raise InputError(f"{name}, line {n}, is not a JSON object.")
            rows.append(row)
        return rows
    data_obj = _loads(text, name)
    if isinstance(data_obj, list) and len(data_obj) > limits.max_upload_rows:
        raise _too_many(name, len(data_obj), limits)
    return data_obj


def _too_many(name, count, limits: Limits) -> InputError:
    return InputError(f"{name} has {count} rows, over the limit of {limits.max_upload_rows} "
                      "(max_upload_rows, set by INSPECTOR_MAX_UPLOAD_ROWS).")


def _pick(row: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in row:
            return key
    return None


def _as_text(value) -> str:
    """A prompt or completion cell: text, or a chat-format list of messages (the last message's content)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        content = value[-1]["content"]
        if isinstance(content, str):
            return content
        raise InputError(f"A chat message's content must be text, got {type(content).__name__}.")
    raise InputError(f"Expected text or a list of chat messages, got {type(value).__name__}.")


def _messages(value) -> list[dict] | None:
    """A chat-format prompt cell as a list of {role, content} messages (text contents); None for a text cell."""
    if not isinstance(value, list):
        return None
    out = []
    for m in value:
        if not isinstance(m, dict):
            raise InputError(f"A chat prompt is a list of messages (each with a text `role` and `content`), "
                             f"not a list holding a {type(m).__name__}.")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise InputError(f"A chat message's {key} must be text, got {type(m.get(key)).__name__}.")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _names_arg(value) -> list[str] | None:
    """A list of column names given as a list or as comma-separated text; None when blank."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(v).strip() for v in items if str(v).strip()]
    return names or None


def reward_weights_arg(value) -> list[float] | None:
    """TRL's `reward_weights` given as a list or as comma-separated text; None when blank."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        weights = [float(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        raise InputError(f"reward_weights must be numbers separated by commas (as TRL's reward_weights), not {value!r}.") from None
    if not all(math.isfinite(w) for w in weights):
        raise InputError(f"reward_weights must be finite numbers, not {value!r}.")
    return weights or None


def split_trl_columns(keys: list[str], columns: dict[str, list], chosen=None) -> tuple[list[str], list[str], str]:
    """Tell a TRL GRPO log's reward columns from its `log_extra` columns. Returns (reward, extra, how).

    TRL writes step, prompt, completion, one column per reward function (named after it), the `log_extra`
    columns, then advantage. `chosen` (names, in TRL's `reward_funcs` order) decides when given; otherwise the
    columns up to the last one named after a built-in reward function are rewards and those after it extras;
    with no such name, every numeric column before the first text column is taken for a reward function."""
    middle = [k for k in keys if k not in TRL_GRPO_FIXED]
    names = _names_arg(chosen)
    if names:
        for n in names:
            if n not in middle:
                raise InputError(f"Reward column {n!r} is not in the file; its columns between completion and "
                                 f"advantage are {', '.join(middle) or 'none'}.")
            if not all(_is_number(v) for v in columns[n]):
                raise InputError(f"Reward column {n!r} holds values that are not numbers: a log_extra column?")
        extra = [k for k in middle if k not in names]
        return names, extra, f"named in the reward-columns field ({', '.join(names)}); the other columns are log_extra columns"
    numeric = []
    for k in middle:
        if not all(_is_number(v) for v in columns[k]):
            break
        numeric.append(k)
    known = [i for i, k in enumerate(numeric) if k in BUILTIN_LOGGED_NAMES]
    if known:
        reward = numeric[: known[-1] + 1]
        how = (f"by TRL's column order (reward functions, then log_extra columns): the columns up to "
               f"{reward[-1]!r}, a built-in reward function's name, are rewards")
    else:
        reward = numeric
        how = ("no column bears a built-in reward function's name: every numeric column before the first text column "
               "is taken for a reward function")
    extra = [k for k in middle if k not in reward]
    if extra:
        how += f"; {', '.join(extra)} taken as log_extra column(s)"
    return reward, extra, how + ". Name the reward columns in the field if this is wrong"


def read_upload_file(path: str | os.PathLike, limits: Limits | None = None, **trl) -> dict | Completions:
    """`read_upload` of a file on disk, its size checked before a byte of it is read."""
    limits = limits or Limits.from_env()
    path = os.fspath(path)
    name = os.path.basename(path)
    try:
        _check_size(os.stat(path).st_size, name, limits)
        with open(path, "rb") as f:
            data = f.read(limits.max_upload_bytes + 1)  # a file that grew since: still refused by read_upload
    except OSError as exc:
        raise InputError(f"The uploaded file {name} cannot be read ({exc.strerror}); upload it again.") from None
    return read_upload(data, name, limits, **trl)


def read_upload(data: bytes, name: str, limits: Limits | None = None, *, reward_columns=None,
                reward_weights=None) -> dict | Completions:
    """Parse an uploaded file. Returns a rollout record (a dict, for `rollout_from_dict`) or `Completions`.

    For a TRL GRPO log: `reward_columns` (names, a list or comma-separated text) picks the reward functions'
    columns (see `split_trl_columns`), `reward_weights` (TRL's `reward_weights`, in the same order) their
    weights, 1 each when not given. Raises InputError with what is wrong and what is accepted.
    """
    limits = limits or Limits.from_env()
    _check_bytes(data, name, limits)
    parsed = _rows_from(data, name, limits)
    if isinstance(parsed, dict):
        if parsed.get("format", "").startswith("rollout-inspector/"):
            return parsed
        raise InputError(f"{name} is a JSON object but not a rollout record; a table of completions is a list of rows.")
    if not isinstance(parsed, list) or not parsed:
        raise InputError(f"{name} holds no rows.")
    if not all(isinstance(r, dict) for r in parsed):
        raise InputError(f"{name}: every row must be an object with prompt and completion fields.")
    first = parsed[0]
    p_key, c_key, r_key = _pick(first, PROMPT_KEYS), _pick(first, COMPLETION_KEYS), _pick(first, REWARD_KEYS)
    if p_key is None or c_key is None:
        raise InputError(
            f"{name} has columns {sorted(first)[:12]}; expected a prompt column ({' / '.join(PROMPT_KEYS)}) and a "
            f"completion column ({' / '.join(COMPLETION_KEYS)}), as TRL's completion tables and verl's dumps have."
        )
    prompts, completions, rewards, messages = [], [], [], []
    for n, row in enumerate(parsed, 1):
        try:
            messages.append(_messages(row.get(p_key)))
            prompts.append(_as_text(row.get(p_key)))
            completions.append(_as_text(row.get(c_key)))
        except InputError as exc:
            raise InputError(f"{name}, row {n}: {exc}") from None
        if r_key is not None:
            try:
                rewards.append(float(row.get(r_key)))
            except (TypeError, ValueError):
                rewards.append(float("nan"))
    source = "verl" if p_key == "input" else "trl" if p_key == "prompt" else "table"
    keys = list(first)
    columns = {k: [row.get(k) for row in parsed] for k in keys if k not in (p_key, c_key)}
    chosen, reward_columns = reward_columns, []
    kind, extra, how, weights, advantages = "table", [], "", None, None
    if p_key == "prompt" and "advantage" in first:
        kind, source = "trl-grpo", "trl-grpo"
        reward_columns, extra, how = split_trl_columns(keys, columns, chosen)
        advantages = [as_number(v) for v in columns["advantage"]]
        weights = reward_weights_arg(reward_weights) or [1.0] * len(reward_columns)
        if len(weights) != len(reward_columns):
            raise InputError(f"reward_weights has {len(weights)} value(s) for {len(reward_columns)} reward column(s) "
                             f"({', '.join(reward_columns)}): give one weight per reward function, in that order.")
    elif p_key == "input":
        kind = "verl"
    return Completions(prompts, completions, rewards if r_key is not None else None, f"{source}: {Path(name).name}",
                       kind=kind, columns=columns, reward_columns=reward_columns, advantages=advantages,
                       prompt_is_text=kind == "verl", reward_weights=weights, extra_columns=extra,
                       reward_columns_how=how,
                       prompt_messages=messages if all(m is not None for m in messages) else None)


def _rendered_chats(tok, parsed: Completions) -> list[str] | None:
    """Each whole chat prompt (system and user messages) rendered with the policy's chat template, with the
    generation prompt, as TRL renders a conversational prompt; None without chat prompts or a template."""
    if not parsed.prompt_messages or not getattr(tok, "chat_template", None):
        return None
    try:
        return [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in parsed.prompt_messages]
    except Exception as exc:  # noqa: BLE001 - jinja raises many types for messages a template refuses
        raise InputError(f"The policy's chat template refuses a prompt of the file: {str(exc)[:200]}") from None


def rescore(models, parsed: Completions, *, stop_token_id="eos", use_chat_template: bool = True,
            attention: str = "trl", max_completion_length: int | None = None, temperature: float = 1.0,
            progress=None):
    """Re-score a file's completions with the loaded models (`rollout.score_completions`), keeping its columns.

    A verl dump's prompt is tokenized as the text it is (the trainer's chat template is already in it); a chat
    prompt (TRL's conversational format) is rendered whole, system message included, with the chat template;
    a TRL GRPO log keeps its groups (`samples_per_prompt` = the group size), reward columns and weights so that
    its GRPO step can be recomputed. `temperature`: the one the completions were sampled at in training.
    `max_completion_length` (the trainer's, when known): a completion that re-tokenizes to that many tokens
    was cut there and gets no EOS. The notes say what rebuilding ids from decoded text can change."""
    from .runner import score_completions

    tok = models.tokenizer
    ended = None
    if max_completion_length is not None:
        ended = [len(tok(c, add_special_tokens=False)["input_ids"]) < max_completion_length for c in parsed.completions]
    groups = parsed.num_generations() if parsed.kind == "trl-grpo" else None
    chats = _rendered_chats(tok, parsed) if use_chat_template and not parsed.prompt_is_text else None
    rollout = score_completions(
        models, chats or parsed.prompts, parsed.completions, ended=ended, stop_token_id=stop_token_id,
        use_chat_template=use_chat_template and not parsed.prompt_is_text and chats is None, attention=attention,
        source=parsed.source, samples_per_prompt=groups or 1, columns=parsed.columns, temperature=temperature,
        progress=progress,
        trainer={"trl-grpo": "grpo", "verl": "verl"}.get(parsed.kind, "ppo"),
    )
    if chats is not None:
        _keep_chat_prompts(rollout, parsed, tok)
    if parsed.prompt_is_text:
        rollout.notes.append(
            "verl dump: each prompt is the text the trainer decoded after applying its chat template, without special "
            "tokens; it is tokenized here as the text it is, not wrapped in a chat template again. Ids rebuilt from "
            "decoded text can differ from the ids the trainer saw (the special tokens are gone, and decoding then "
            "encoding need not give back the same tokens)."
        )
    elif parsed.kind == "trl-grpo":
        rollout.settings["reward_columns"] = list(parsed.reward_columns)
        rollout.settings["reward_weights"] = list(parsed.reward_weights or [1.0] * len(parsed.reward_columns))
        rollout.settings["extra_columns"] = list(parsed.extra_columns)
        rollout.settings["reward_columns_how"] = parsed.reward_columns_how
        rollout.notes.append(
            f"TRL GRPO log: {len(parsed.reward_columns)} reward column(s) ("
            + ", ".join(f"{n} ×{w:g}" for n, w in zip(parsed.reward_columns, rollout.settings["reward_weights"]))
            + f"), {len(parsed.extra_columns)} log_extra column(s) and the logged advantages are kept; groups of "
            f"{groups or '?'} completions. Reward columns: {parsed.reward_columns_how}. Completions were decoded "
            "without special tokens and are re-tokenized here, with the EOS token appended: ids rebuilt from decoded "
            "text can differ from those the trainer saw (a completion cut by max_completion_length had no EOS)."
        )
    if parsed.rewards is not None:
        rollout.notes.append("The file's own rewards, by sample: "
                             + ", ".join(f"{i}: {v:+.3f}" for i, v in enumerate(parsed.rewards[:50])))
    return rollout


def _keep_chat_prompts(rollout, parsed: Completions, tok) -> None:
    """The record of chat prompts rendered here: the last message's text shown as the prompt, the template
    marked as applied, the whole messages kept in the settings; a note if the tokenizer would add special
    tokens that TRL's `apply_chat_template(tokenize=True)` does not."""
    rollout.prompts = list(parsed.prompts)
    rollout.chat_template_applied = True
    rollout.settings["use_chat_template"] = True
    rollout.settings["prompt_messages"] = parsed.prompt_messages
    roles = sorted({m["role"] for msgs in parsed.prompt_messages for m in msgs})
    rollout.notes.append(f"Chat prompts ({', '.join(roles)} messages) are rendered whole with the policy's chat "
                         "template and the generation prompt, as TRL's GRPOTrainer renders them.")
    first = parsed.prompt_messages[0]
    trl_ids = tok.apply_chat_template(first, tokenize=True, add_generation_prompt=True)
    trl_ids = list(trl_ids["input_ids"]) if hasattr(trl_ids, "keys") else list(trl_ids)
    ours = rollout.queries[0][rollout.query_attention_mask[0].bool()].tolist()
    if ours != trl_ids:
        rollout.notes.append("This tokenizer adds special tokens to the rendered prompt that TRL's tokenization "
                             "does not: the prompt ids differ from the trainer's.")
