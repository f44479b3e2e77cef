"""Watching the running agent: health judgement, metrics, the HTTP endpoint."""
