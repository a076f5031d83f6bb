"""Analysis of trained models and exact references: what a learned transform does
(:mod:`~ndm.analysis.diagnostics`), how far a flow transports (:mod:`~ndm.analysis.transport`),
and oracles whose posterior is exact (:mod:`~ndm.analysis.mixture_oracle`,
:mod:`~ndm.analysis.lattice_oracle`)."""
