"""`aggregator run`: decides *when* to build (file events, polls, SIGHUP), never *how*.

runner.py is the lifecycle and the one build thread; watcher.py debounces file events;
scheduler.py schedules upstream polls; http.py serves the output dir; notify.py talks to
systemd; websub.py sends WebSub pings on a thread of its own; lock.py keeps a shell
`build` and the service from building at the same time.
"""
