"""The running server: lifecycle, reload, health polling, workers, metrics, service addresses."""
