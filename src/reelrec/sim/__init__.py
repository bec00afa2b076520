"""The synthetic world (``reelrec simulate``): catalog, users, days of behaviour and the ground
truth beside the lake. See ``world.py`` for the entry point and ``truth.py`` for the true
preference model that evaluation reads back."""

from reelrec.sim.truth import Truth, load_truth, load_world_meta
from reelrec.sim.world import SimConfig, SimSummary, simulate

__all__ = ["SimConfig", "SimSummary", "Truth", "load_truth", "load_world_meta", "simulate"]
