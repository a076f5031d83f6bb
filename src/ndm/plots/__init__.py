"""Figures, drawn on matplotlib's Agg canvas: 2-D runs (:mod:`~ndm.plots.points`) and image
runs (:mod:`~ndm.plots.images`)."""
