"""ArviZ diagnostics for variational fits: DataTree export, PSIS k-hat, summaries and plots."""

from pyro_reparam.diagnostics.datatree import to_datatree
from pyro_reparam.diagnostics.khat import khat_reading, pareto_khat, vi_khat, vi_log_weights
from pyro_reparam.diagnostics.report import diagnose

__all__ = ["diagnose", "khat_reading", "pareto_khat", "to_datatree", "vi_khat", "vi_log_weights"]
