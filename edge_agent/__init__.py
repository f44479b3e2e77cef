"""edge-agent: meters + MES order events -> per-lot energy and CO2e records over MQTT."""

__version__ = "0.1.0"
__all__ = ["__version__"]
