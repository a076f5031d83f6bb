"""Evaluation of trained models: test-set likelihoods in bits/dim, sample quality (FID) and
the reports a run writes."""
