"""Subscribers for the event bus that show a run on the terminal."""

from rh_agents.bus_handlers.group_view import ParallelGroupState
from rh_agents.bus_handlers.parallel_printer import ParallelEventPrinter
from rh_agents.bus_handlers.printer import EventPrinter

__all__ = ["EventPrinter", "ParallelEventPrinter", "ParallelGroupState"]
