"""modelrollout: progressive rollouts of LLM models and prompt versions over Istio, gated by Prometheus."""

__version__ = "0.1.0"
