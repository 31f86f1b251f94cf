"""Every agent as a pure fold: `step(state, event) -> (state, outputs)` over typed state, no I/O.

The stream workers (`streams/`) decode a record, call its fold and send the outputs; the in-memory driver
(`selfevolve/flow/driver.py`) runs the same folds over a list of events with no broker. `dataflow.py`
declares, in one place, which fold reads which event kinds.
"""

from selfevolve.flow.events import KINDS, Event, Out

__all__ = ["Event", "KINDS", "Out"]
