"""Seeing where a run's time went: a timeline of every group member (HTML with inline SVG).

Per-group metrics live with the groups (``p.metrics()``, ``rh_agents.core.parallel.metrics``);
OpenTelemetry export is ``rh_agents.integrations.otel``::

    from rh_agents.observability import TimelineRecorder

    recorder = TimelineRecorder()
    bus.subscribe(recorder)
    ...
    await bus.drain()
    recorder.timeline().write_html("run.html")
"""

from rh_agents.observability.timeline import MemberBar, Timeline, TimelineGroup, TimelineRecorder

__all__ = ["MemberBar", "Timeline", "TimelineGroup", "TimelineRecorder"]
