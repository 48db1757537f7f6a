"""The record every other stage reads: `Rollout` (one rollout step, TRL's names) and its file format."""

from .format import FORMAT, rollout_from_dict, rollout_to_dict, rollout_to_json, rollout_to_jsonl, rollout_to_parquet
from .rollout import EOS, Rollout

__all__ = ["EOS", "FORMAT", "Rollout", "rollout_from_dict", "rollout_to_dict", "rollout_to_json", "rollout_to_jsonl",
           "rollout_to_parquet"]
