"""jaxgmm: Gaussian mixture models fitted by expectation-maximisation, as functional JAX.

Float64 needs ``jax.config.update("jax_enable_x64", True)``; otherwise JAX computes in float32.
"""

from jaxgmm._src.adaptation import map_adapt
from jaxgmm._src.criteria import aic, bic, n_parameters
from jaxgmm._src.em import e_step, log_likelihood, log_prob, m_step, predict, predict_proba
from jaxgmm._src.fitting import fit
from jaxgmm._src.gradient_fit import fit_gradient
from jaxgmm._src.initialization import init_params
from jaxgmm._src.model import GMM, FitResult
from jaxgmm._src.online import OnlineState, fit_online, online_init, online_update
from jaxgmm._src.sampling import sample
from jaxgmm._src.selection import Selection, select
from jaxgmm._src.serialization import load, save
from jaxgmm._src.streaming import fit_stream
from jaxgmm._src.unconstrained import UnconstrainedGMM, from_unconstrained, to_unconstrained

__version__ = "0.1.0"

__all__ = [
    "GMM",
    "FitResult",
    "fit",
    "init_params",
    "e_step",
    "m_step",
    "log_prob",
    "log_likelihood",
    "predict",
    "predict_proba",
    "sample",
    "n_parameters",
    "bic",
    "aic",
    "save",
    "load",
    "select",
    "Selection",
    "fit_stream",
    "fit_online",
    "OnlineState",
    "online_init",
    "online_update",
    "fit_gradient",
    "UnconstrainedGMM",
    "to_unconstrained",
    "from_unconstrained",
    "map_adapt",
]
