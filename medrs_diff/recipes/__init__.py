"""Packaged LightningCLI recipes (``*.yaml`` data files): ``medrs-diff list`` shows them and
``medrs-diff fit --config <name>`` finds them by name (see :mod:`medrs_diff.train.recipe`)."""
