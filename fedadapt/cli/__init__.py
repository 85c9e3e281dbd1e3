"""The `fedadapt` command line (`app.main`), one module per command group, as `flwr/cli/`."""
