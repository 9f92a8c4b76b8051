"""Multislice exit waves (engines: torch, abtem, prismatic)."""
