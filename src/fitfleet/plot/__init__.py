"""Plots of fits and what they determine (matplotlib, the ``plot`` extra).

``import fitfleet.plot`` works without matplotlib; the first plot imports it (an
ImportError names the extra to install).  Every function draws on the ``ax`` (or
``fig``, for several panels) it is given, else on a new pyplot figure, and returns the
Axes or Figure; none calls ``show()`` or touches pyplot's current figure, so they work
under any backend, Agg included.

- :func:`fit`: data, fitted curve, confidence band (delta method) and residuals.
- :func:`waterfall`, :func:`parameters`: a multi-start's sorted costs and best fits.
- :func:`profile`: profile likelihoods with the threshold and interval.
- :func:`spectrum`: the eigenvalues of JᵀJ and their eigenvectors (sloppiness).
- :func:`correlation`: the correlation matrix.
- :func:`history`, :func:`landscape`: an optimiser's path per step, and paths over a
  two-parameter cost landscape.
"""

from ._analysis import correlation, profile, spectrum
from ._fit import fit
from ._history import history, landscape
from ._multistart import parameters, waterfall

__all__ = ["fit", "waterfall", "parameters", "profile", "spectrum", "correlation", "history", "landscape"]
