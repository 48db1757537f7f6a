"""Pure views of a Rollout: plotly figures, pandas tables and token HTML. No gradio, no model calls."""

from .figures import LOGPROB_KINDS, entropy_heatmap, logprob_heatmap, values_figure
from .tables import (
    BATCH_COLUMNS,
    STOP_COLUMNS,
    Column,
    batch_table,
    column_datatypes,
    column_widths,
    displayed,
    stops_table,
)
from .compare import compare_html
from .ppo import (
    PPO_CSS,
    diagnostics_html,
    logprob_agreement_markdown,
    logprob_gap_figure,
    ppo_metrics_table,
    ppo_rows_html,
)
from .tokens import TOKEN_CSS, sequences_html, split_html, value_reward_html

__all__ = [
    "BATCH_COLUMNS",
    "LOGPROB_KINDS",
    "PPO_CSS",
    "STOP_COLUMNS",
    "TOKEN_CSS",
    "Column",
    "batch_table",
    "column_datatypes",
    "compare_html",
    "column_widths",
    "diagnostics_html",
    "displayed",
    "logprob_agreement_markdown",
    "logprob_gap_figure",
    "ppo_metrics_table",
    "ppo_rows_html",
    "entropy_heatmap",
    "logprob_heatmap",
    "sequences_html",
    "split_html",
    "stops_table",
    "value_reward_html",
    "values_figure",
]
