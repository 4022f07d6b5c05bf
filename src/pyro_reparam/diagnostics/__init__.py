"""ArviZ diagnostics for variational fits: DataTree export, PSIS k-hat, summaries and plots,
and the warnings for fits that fail silently (collapse, unscaled minibatches, a stalled ELBO)."""

from pyro_reparam.diagnostics.datatree import to_datatree
from pyro_reparam.diagnostics.figure_io import MAX_PIXELS, save_figure, saved_labels
from pyro_reparam.diagnostics.fit_checks import check_collapse, check_data_scaling, check_plateau
from pyro_reparam.diagnostics.khat import khat_reading, pareto_khat, vi_khat, vi_log_weights
from pyro_reparam.diagnostics.report import diagnose

__all__ = [
    "MAX_PIXELS",
    "check_collapse",
    "check_data_scaling",
    "check_plateau",
    "diagnose",
    "khat_reading",
    "pareto_khat",
    "save_figure",
    "saved_labels",
    "to_datatree",
    "vi_khat",
    "vi_log_weights",
]
