"""The ``keyvault`` command line (installed as ``keyvault.cli``)."""
